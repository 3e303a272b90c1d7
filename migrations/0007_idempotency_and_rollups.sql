-- Idempotency-Key: the first result of a POST that creates something, replayed to a retry with the
-- same key and the same body (another body: 409). Scoped per API key (or the operator); the stored
-- response is encrypted with a key derived from the caller's own secret, so it never rests in
-- plain text (a new API key's secret is in its creation response). Kept 24 hours.
CREATE TABLE idempotency_keys (
    owner           text NOT NULL,            -- api key id, or 'operator'
    key             text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint     bytea NOT NULL,           -- sha256 of the route and the canonical request body
    status          text NOT NULL CHECK (status IN ('in_progress', 'done')),
    response        bytea,                    -- nonce || AES-GCM ciphertext of the response body
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (created_at);

-- One representation of "no adapter": NULL, in the ledger and in the rollups alike (the rollups
-- used '' because a primary key cannot hold NULL; a unique constraint with NULLS NOT DISTINCT can,
-- PostgreSQL 15+).
ALTER TABLE usage_hourly DROP CONSTRAINT usage_hourly_pkey;
ALTER TABLE usage_daily DROP CONSTRAINT usage_daily_pkey;
ALTER TABLE usage_hourly ALTER COLUMN adapter_id DROP NOT NULL, ALTER COLUMN adapter_id DROP DEFAULT;
ALTER TABLE usage_daily ALTER COLUMN adapter_id DROP NOT NULL, ALTER COLUMN adapter_id DROP DEFAULT;
UPDATE usage_hourly SET adapter_id = NULL WHERE adapter_id = '';
UPDATE usage_daily SET adapter_id = NULL WHERE adapter_id = '';
ALTER TABLE usage_hourly ADD CONSTRAINT usage_hourly_key
    UNIQUE NULLS NOT DISTINCT (tenant_id, bucket, api_key_id, base_model_id, adapter_id);
ALTER TABLE usage_daily ADD CONSTRAINT usage_daily_key
    UNIQUE NULLS NOT DISTINCT (tenant_id, bucket, api_key_id, base_model_id, adapter_id);
