-- The spine: tenants, their API keys, base models, the worker registry and the usage ledger.
-- Tokens are bigint counts; money (issue: prices/budgets) is integer micro-USD in later migrations.

CREATE TABLE tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id              text PRIMARY KEY,
    tenant_id       text NOT NULL REFERENCES tenants (id),
    name            text NOT NULL DEFAULT '',
    -- sha256 of the whole secret: keys carry ≥128 random bits, so a fast hash is safe and a
    -- lookup costs one index probe.
    key_hash        bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    display_prefix  text NOT NULL,
    mode            text NOT NULL CHECK (mode IN ('live', 'test')),
    scopes          text[] NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    revoked_at      timestamptz
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, created_at);

CREATE TABLE base_models (
    id              text PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    max_model_len   integer NOT NULL CHECK (max_model_len > 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Workers announce themselves here; gateways read it and poll each worker for readiness.
CREATE TABLE workers (
    url             text PRIMARY KEY,
    base_model_id   text NOT NULL REFERENCES base_models (id),
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per admitted request, keyed by the gateway's request id; inserted idempotently.
CREATE TABLE usage_ledger (
    request_id          text PRIMARY KEY,
    tenant_id           text NOT NULL REFERENCES tenants (id),
    api_key_id          text NOT NULL REFERENCES api_keys (id),
    base_model_id       text NOT NULL REFERENCES base_models (id),
    model               text NOT NULL,
    endpoint            text NOT NULL CHECK (endpoint IN ('chat.completions', 'completions')),
    outcome             text NOT NULL CHECK (outcome IN ('success', 'upstream_error', 'client_disconnect', 'unavailable')),
    http_status         integer NOT NULL,
    streamed            boolean NOT NULL,
    prompt_tokens       bigint NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens   bigint NOT NULL CHECK (completion_tokens >= 0),
    worker_url          text,
    started_at          timestamptz NOT NULL,
    finished_at         timestamptz NOT NULL,
    ttft_ms             integer,
    duration_ms         integer NOT NULL
);
CREATE INDEX usage_ledger_by_tenant_time ON usage_ledger (tenant_id, started_at);
