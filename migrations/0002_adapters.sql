-- LoRA adapters: metadata here, weights in the blob store by sha256.

-- What the gateway needs to validate an adapter against a base model without loading it.
ALTER TABLE base_models
    ADD COLUMN architecture jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN max_lora_rank integer NOT NULL DEFAULT 16 CHECK (max_lora_rank > 0);

-- One row per stored weights file; adapters with identical bytes share it.
CREATE TABLE blobs (
    sha256      text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size_bytes  bigint NOT NULL CHECK (size_bytes > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE adapters (
    id              text PRIMARY KEY,
    -- vLLM's LoRARequest needs a stable integer id; it comes from here, never from hash().
    lora_int_id     bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    tenant_id       text NOT NULL REFERENCES tenants (id),
    name            text NOT NULL,
    base_model_id   text NOT NULL REFERENCES base_models (id),
    rank            integer NOT NULL CHECK (rank > 0),
    lora_alpha      double precision NOT NULL,
    target_modules  text[] NOT NULL,
    config          jsonb NOT NULL,
    sha256          text NOT NULL,  -- the blob; deleted adapters keep it as history, so no FK
    size_bytes      bigint NOT NULL,
    status          text NOT NULL CHECK (status IN ('ready', 'deleted')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
-- Names are unique per tenant among adapters that still exist.
CREATE UNIQUE INDEX adapters_live_name ON adapters (tenant_id, name) WHERE status <> 'deleted';
CREATE INDEX adapters_by_tenant ON adapters (tenant_id, created_at);
CREATE INDEX adapters_by_sha ON adapters (sha256);

ALTER TABLE usage_ledger ADD COLUMN adapter_id text REFERENCES adapters (id);
