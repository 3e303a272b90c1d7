-- The Batch API: a tenant's `batch` file becomes a batch of lines that the gateways' dispatchers run
-- through the same admission, routing and ledger as synchronous requests, at a discount, while the
-- workers have headroom (gateway/batches/dispatcher.py).

-- A price version's batch discount, in basis points of the synchronous cost (5000: half price, as
-- the hosted APIs sell it).
ALTER TABLE prices ADD COLUMN batch_discount_bps integer NOT NULL DEFAULT 5000
    CHECK (batch_discount_bps >= 0 AND batch_discount_bps <= 10000);

-- A ledger row of a batch line names its batch; its request id is derived from the batch and the
-- line, so a line run twice (a dispatcher died after the engine answered) is recorded once.
ALTER TABLE usage_ledger ADD COLUMN batch_id text;
CREATE INDEX usage_ledger_by_batch ON usage_ledger (batch_id) WHERE batch_id IS NOT NULL;

-- What kind of usage a ledger row is: its own line in /v1/usage, the dashboard and invoices.
CREATE FUNCTION lorafleet_usage_kind(endpoint text, batch_id text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN endpoint = 'fine_tuning' THEN 'fine_tuning' WHEN batch_id IS NOT NULL THEN 'batch' ELSE 'requests' END;

-- The rollups split by kind (rebuilt from the ledger: fine-tuning rows were mixed in before).
ALTER TABLE usage_hourly ADD COLUMN kind text NOT NULL DEFAULT 'requests'
    CHECK (kind IN ('requests', 'batch', 'fine_tuning'));
ALTER TABLE usage_daily ADD COLUMN kind text NOT NULL DEFAULT 'requests'
    CHECK (kind IN ('requests', 'batch', 'fine_tuning'));
ALTER TABLE usage_hourly DROP CONSTRAINT usage_hourly_key;
ALTER TABLE usage_daily DROP CONSTRAINT usage_daily_key;
ALTER TABLE usage_hourly ADD CONSTRAINT usage_hourly_key
    UNIQUE NULLS NOT DISTINCT (tenant_id, bucket, api_key_id, base_model_id, adapter_id, kind);
ALTER TABLE usage_daily ADD CONSTRAINT usage_daily_key
    UNIQUE NULLS NOT DISTINCT (tenant_id, bucket, api_key_id, base_model_id, adapter_id, kind);
LOCK TABLE usage_hourly, usage_daily IN EXCLUSIVE MODE;
DELETE FROM usage_hourly;
DELETE FROM usage_daily;
INSERT INTO usage_hourly (tenant_id, bucket, api_key_id, base_model_id, adapter_id, kind, requests, errors,
                          prompt_tokens, completion_tokens, cost_pico_usd, cached_prompt_tokens)
SELECT tenant_id, date_trunc('hour', started_at, 'UTC'), api_key_id, base_model_id, adapter_id,
       lorafleet_usage_kind(endpoint, batch_id), count(*), count(*) FILTER (WHERE outcome <> 'success'),
       sum(prompt_tokens), sum(completion_tokens), sum(cost_pico_usd), sum(cached_prompt_tokens)
FROM usage_ledger GROUP BY 1, 2, 3, 4, 5, 6;
INSERT INTO usage_daily (tenant_id, bucket, api_key_id, base_model_id, adapter_id, kind, requests, errors,
                         prompt_tokens, completion_tokens, cost_pico_usd, cached_prompt_tokens)
SELECT tenant_id, date_trunc('day', bucket, 'UTC'), api_key_id, base_model_id, adapter_id, kind, sum(requests),
       sum(errors), sum(prompt_tokens), sum(completion_tokens), sum(cost_pico_usd), sum(cached_prompt_tokens)
FROM usage_hourly GROUP BY 1, 2, 3, 4, 5, 6;

ALTER TABLE invoice_lines ADD COLUMN batch_discount_bps integer;

CREATE TABLE batches (
    id                  text PRIMARY KEY,
    tenant_id           text NOT NULL REFERENCES tenants (id),
    api_key_id          text NOT NULL,      -- the key that created it: every line runs as this key
    endpoint            text NOT NULL CHECK (endpoint IN ('/v1/chat/completions', '/v1/completions',
                                                          '/v1/embeddings', '/v1/responses')),
    input_file_id       text NOT NULL,
    completion_window   text NOT NULL,
    status              text NOT NULL DEFAULT 'validating' CHECK (status IN (
                            'validating', 'failed', 'in_progress', 'finalizing', 'completed', 'expired',
                            'cancelling', 'cancelled')),
    metadata            jsonb,
    output_expires_seconds integer,         -- the output and error files' expiry (output_expires_after)
    errors              jsonb,              -- a file refused by validation: [{code, line, message, param}]
    output_file_id      text,
    error_file_id       text,
    total               integer NOT NULL DEFAULT 0,
    completed           integer NOT NULL DEFAULT 0,
    failed              integer NOT NULL DEFAULT 0,
    -- Validation and finalization are leased to one gateway at a time; a dead one's lease runs out.
    claimed_by          text,
    lease_until         timestamptz,
    -- How the batch ends once no line runs any more: completed, cancelled or expired.
    ending              text CHECK (ending IN ('completed', 'cancelled', 'expired')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    in_progress_at      timestamptz,
    expires_at          timestamptz NOT NULL,
    finalizing_at       timestamptz,
    completed_at        timestamptz,
    failed_at           timestamptz,
    expired_at          timestamptz,
    cancelling_at       timestamptz,
    cancelled_at        timestamptz
);
CREATE INDEX batches_by_tenant ON batches (tenant_id, created_at DESC, id DESC);
CREATE INDEX batches_open ON batches (created_at)
    WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');

CREATE TABLE batch_lines (
    batch_id        text NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    line            integer NOT NULL,        -- 1-based, as refusals name it
    custom_id       text NOT NULL,
    base_model_id   text NOT NULL,           -- the line's model's base: the dispatcher feeds each model's workers
    body            bytea NOT NULL,          -- the request body, as the file held it
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done')),
    claimed_by      text,
    lease_until     timestamptz,
    not_before      timestamptz,             -- a line sent back (rate limited, no worker): not before this
    attempts        integer NOT NULL DEFAULT 0,
    request_id      text NOT NULL,           -- derived from the batch and the line: the ledger's key
    status_code     integer,                 -- the answer (NULL: none, see error_code)
    response        bytea,                   -- its body, exactly as the synchronous route returned it
    error_code      text,
    error_message   text,
    finished_at     timestamptz,
    PRIMARY KEY (batch_id, line),
    UNIQUE (batch_id, custom_id)
);
CREATE INDEX batch_lines_open ON batch_lines (base_model_id, batch_id, line) WHERE state <> 'done';
