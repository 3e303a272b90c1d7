-- Money: prices, costs on the ledger, accounts with reservations, rate limits, rollups, invoices,
-- and the Stripe outbox. Every amount is integer micro-USD (1 USD = 1,000,000).

-- Price versions per base model. A row is never updated: a new price is a new row with its own
-- effective time, and ledger rows point at the version they were priced with.
CREATE TABLE prices (
    id                          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    base_model_id               text NOT NULL REFERENCES base_models (id),
    prompt_micro_usd_per_mtok       bigint NOT NULL CHECK (prompt_micro_usd_per_mtok >= 0),
    completion_micro_usd_per_mtok   bigint NOT NULL CHECK (completion_micro_usd_per_mtok >= 0),
    -- Added per million tokens (prompt + completion) when the request used an adapter.
    adapter_surcharge_micro_usd_per_mtok bigint NOT NULL DEFAULT 0 CHECK (adapter_surcharge_micro_usd_per_mtok >= 0),
    effective_at                timestamptz NOT NULL,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (base_model_id, effective_at)
);

ALTER TABLE usage_ledger
    ADD COLUMN cost_micro_usd bigint NOT NULL DEFAULT 0 CHECK (cost_micro_usd >= 0),
    ADD COLUMN price_id bigint REFERENCES prices (id),
    ADD COLUMN invoice_id text;  -- set once, by the invoice that bills the row
CREATE INDEX usage_ledger_uninvoiced ON usage_ledger (tenant_id, started_at) WHERE invoice_id IS NULL;

-- One row per tenant: limits and the running counters admission checks in one statement.
CREATE TABLE tenant_accounts (
    tenant_id               text PRIMARY KEY REFERENCES tenants (id),
    -- postpaid: invoiced monthly, capped only by the spend limit; prepaid: spend needs credits.
    billing_mode            text NOT NULL DEFAULT 'postpaid' CHECK (billing_mode IN ('postpaid', 'prepaid')),
    monthly_spend_limit_micro_usd bigint CHECK (monthly_spend_limit_micro_usd >= 0),
    max_concurrent_requests integer CHECK (max_concurrent_requests > 0),
    credit_granted_micro_usd bigint NOT NULL DEFAULT 0,
    spent_total_micro_usd   bigint NOT NULL DEFAULT 0,      -- all settled ledger cost
    period_start            date NOT NULL DEFAULT date_trunc('month', now() AT TIME ZONE 'UTC')::date,
    period_spent_micro_usd  bigint NOT NULL DEFAULT 0,      -- settled cost of rows started in period_start's month
    reserved_micro_usd      bigint NOT NULL DEFAULT 0 CHECK (reserved_micro_usd >= 0),
    in_flight               integer NOT NULL DEFAULT 0 CHECK (in_flight >= 0),
    stripe_customer_id      text UNIQUE,
    updated_at              timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tenant_accounts (tenant_id) SELECT id FROM tenants;

CREATE TABLE credit_grants (
    id              text PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants (id),
    amount_micro_usd bigint NOT NULL CHECK (amount_micro_usd <> 0),
    reason          text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_grants_by_tenant ON credit_grants (tenant_id, created_at);

-- Gateways heartbeat here; the sweeper releases reservations of gateways that stopped beating.
CREATE TABLE gateways (
    id              text PRIMARY KEY,
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now()
);

-- The worst-case cost held for an admitted request until its ledger row settles it.
CREATE TABLE reservations (
    request_id      text PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants (id),
    gateway_id      text NOT NULL,
    amount_micro_usd bigint NOT NULL CHECK (amount_micro_usd >= 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_by_gateway ON reservations (gateway_id);

-- Per-key rate limits (NULL: unlimited) and their GCRA state: the "theoretical arrival time"
-- of each dimension. One timestamp per limit is the whole state, exact across gateways.
ALTER TABLE api_keys
    ADD COLUMN requests_per_minute integer CHECK (requests_per_minute > 0),
    ADD COLUMN tokens_per_minute integer CHECK (tokens_per_minute > 0);
CREATE TABLE rate_limit_state (
    api_key_id      text PRIMARY KEY REFERENCES api_keys (id),
    request_tat    timestamptz NOT NULL DEFAULT '-infinity',
    token_tat      timestamptz NOT NULL DEFAULT '-infinity'
);

-- Rollups: derived from the ledger in the same statement that inserts it; rebuildable.
CREATE TABLE usage_hourly (
    tenant_id       text NOT NULL,
    bucket          timestamptz NOT NULL,
    api_key_id      text NOT NULL,
    base_model_id   text NOT NULL,
    adapter_id      text NOT NULL DEFAULT '',   -- '' for the base model: part of the key
    requests        bigint NOT NULL,
    errors          bigint NOT NULL,
    prompt_tokens   bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cost_micro_usd  bigint NOT NULL,
    PRIMARY KEY (tenant_id, bucket, api_key_id, base_model_id, adapter_id)
);
CREATE TABLE usage_daily (LIKE usage_hourly INCLUDING ALL);

-- Invoices: one per tenant and month, immutable once written.
CREATE TABLE invoices (
    id                  text PRIMARY KEY,
    tenant_id           text NOT NULL REFERENCES tenants (id),
    period_start        date NOT NULL,
    period_end          date NOT NULL,
    subtotal_micro_usd  bigint NOT NULL,
    credit_applied_micro_usd bigint NOT NULL,
    total_micro_usd     bigint NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    stripe_invoice_id   text,
    stripe_exported_at  timestamptz,
    UNIQUE (tenant_id, period_start)
);
CREATE TABLE invoice_lines (
    id                  text PRIMARY KEY,
    invoice_id          text NOT NULL REFERENCES invoices (id),
    position            integer NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('usage', 'adjustment', 'credit')),
    description         text NOT NULL,
    base_model_id       text,
    adapter_id          text,
    price_id            bigint,
    requests            bigint NOT NULL DEFAULT 0,
    prompt_tokens       bigint NOT NULL DEFAULT 0,
    completion_tokens   bigint NOT NULL DEFAULT 0,
    prompt_micro_usd_per_mtok       bigint,
    completion_micro_usd_per_mtok   bigint,
    adapter_surcharge_micro_usd_per_mtok bigint,
    amount_micro_usd    bigint NOT NULL,
    stripe_invoice_item_id text,
    UNIQUE (invoice_id, position)
);

-- Transactional outbox: written with the invoice, drained by the Stripe exporter.
CREATE TABLE stripe_outbox (
    invoice_id      text PRIMARY KEY REFERENCES invoices (id),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Admission of one request in one round trip and one transaction: per-key rate limits (GCRA,
-- a one-minute window), the tenant's concurrency cap, then the budget (spend limit and, for
-- prepaid tenants, credits) with a reservation of the worst-case cost. Nothing is written
-- unless every check passes, so a refused request consumes no rate and holds no money.
-- Concurrent admissions of one tenant serialise on its account row: spend can never pass
-- the limit however many gateways admit at once.
CREATE FUNCTION lorafleet_admit(
    p_request_id text, p_tenant_id text, p_key_id text, p_gateway_id text,
    p_amount bigint, p_tokens bigint)
RETURNS TABLE (verdict text, retry_after_ms bigint,
               requests_limit integer, requests_remaining integer, requests_reset_ms bigint,
               tokens_limit integer, tokens_remaining integer, tokens_reset_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    now_ts    timestamptz := clock_timestamp();
    month     date := date_trunc('month', now_ts, 'UTC')::date;
    win       constant double precision := 60.0;  -- seconds
    r_tat     double precision;  -- epoch seconds
    t_tat     double precision;
    r_new     double precision;
    t_new     double precision;
    now_s     double precision := extract(epoch FROM now_ts);
    wait_s    double precision := 0;
    acct      tenant_accounts%ROWTYPE;
    spent     bigint;
BEGIN
    SELECT k.requests_per_minute, k.tokens_per_minute INTO requests_limit, tokens_limit
    FROM api_keys k WHERE k.id = p_key_id;

    IF requests_limit IS NOT NULL OR tokens_limit IS NOT NULL THEN
        INSERT INTO rate_limit_state (api_key_id) VALUES (p_key_id) ON CONFLICT DO NOTHING;
        SELECT greatest(extract(epoch FROM s.request_tat), now_s), greatest(extract(epoch FROM s.token_tat), now_s)
        INTO r_tat, t_tat FROM rate_limit_state s WHERE s.api_key_id = p_key_id FOR UPDATE;
        IF requests_limit IS NOT NULL THEN
            r_new := r_tat + win / requests_limit;
            wait_s := greatest(wait_s, r_new - win - now_s);
        END IF;
        IF tokens_limit IS NOT NULL THEN
            IF p_tokens > tokens_limit THEN
                verdict := 'too_many_tokens';
                RETURN NEXT; RETURN;
            END IF;
            t_new := t_tat + win * p_tokens / tokens_limit;
            wait_s := greatest(wait_s, t_new - win - now_s);
        END IF;
        IF wait_s > 0 THEN
            verdict := 'rate_limited';
            retry_after_ms := ceil(wait_s * 1000);
            IF requests_limit IS NOT NULL THEN
                requests_remaining := greatest(0, floor((win - (r_tat - now_s)) * requests_limit / win));
                requests_reset_ms := ceil((r_tat - now_s) * 1000);
            END IF;
            IF tokens_limit IS NOT NULL THEN
                tokens_remaining := greatest(0, floor((win - (t_tat - now_s)) * tokens_limit / win));
                tokens_reset_ms := ceil((t_tat - now_s) * 1000);
            END IF;
            RETURN NEXT; RETURN;
        END IF;
    END IF;

    SELECT * INTO acct FROM tenant_accounts a WHERE a.tenant_id = p_tenant_id FOR UPDATE;
    IF NOT FOUND THEN
        verdict := 'no_account';
        RETURN NEXT; RETURN;
    END IF;
    spent := CASE WHEN acct.period_start = month THEN acct.period_spent_micro_usd ELSE 0 END;
    IF acct.max_concurrent_requests IS NOT NULL AND acct.in_flight >= acct.max_concurrent_requests THEN
        verdict := 'too_many_concurrent';
        retry_after_ms := 1000;
        RETURN NEXT; RETURN;
    END IF;
    IF acct.monthly_spend_limit_micro_usd IS NOT NULL
       AND spent + acct.reserved_micro_usd + p_amount > acct.monthly_spend_limit_micro_usd THEN
        verdict := 'spend_limit';
        RETURN NEXT; RETURN;
    END IF;
    IF acct.billing_mode = 'prepaid'
       AND acct.credit_granted_micro_usd - acct.spent_total_micro_usd - acct.reserved_micro_usd < p_amount THEN
        verdict := 'insufficient_credit';
        RETURN NEXT; RETURN;
    END IF;

    UPDATE tenant_accounts a
    SET reserved_micro_usd = a.reserved_micro_usd + p_amount, in_flight = a.in_flight + 1,
        period_spent_micro_usd = spent, period_start = month, updated_at = now_ts
    WHERE a.tenant_id = p_tenant_id;
    INSERT INTO reservations (request_id, tenant_id, gateway_id, amount_micro_usd)
    VALUES (p_request_id, p_tenant_id, p_gateway_id, p_amount);

    IF requests_limit IS NOT NULL OR tokens_limit IS NOT NULL THEN
        UPDATE rate_limit_state s
        SET request_tat = CASE WHEN r_new IS NULL THEN s.request_tat ELSE to_timestamp(r_new) END,
            token_tat = CASE WHEN t_new IS NULL THEN s.token_tat ELSE to_timestamp(t_new) END
        WHERE s.api_key_id = p_key_id;
        IF requests_limit IS NOT NULL THEN
            requests_remaining := greatest(0, floor((win - (r_new - now_s)) * requests_limit / win));
            requests_reset_ms := ceil((r_new - now_s) * 1000);
        END IF;
        IF tokens_limit IS NOT NULL THEN
            tokens_remaining := greatest(0, floor((win - (t_new - now_s)) * tokens_limit / win));
            tokens_reset_ms := ceil((t_new - now_s) * 1000);
        END IF;
    END IF;
    verdict := 'admitted';
    RETURN NEXT;
END;
$$;
