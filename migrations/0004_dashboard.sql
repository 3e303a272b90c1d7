-- Dashboard sign-in: browser sessions and one-time login links. Only hashes of the secrets are kept.
CREATE TABLE dashboard_sessions (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    tenant_id   text REFERENCES tenants (id),      -- NULL: an operator session (admin token)
    key_id      text REFERENCES api_keys (id),     -- the key that signed in, if one did
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);

CREATE TABLE dashboard_login_links (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    tenant_id   text NOT NULL REFERENCES tenants (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);

-- Requests refused by admission (402 over budget, 429 rate or concurrency limit) per tenant and
-- day: they have no ledger row, but a tenant wants to see them. Gateways count in memory and
-- add their counts every few seconds.
CREATE TABLE refusals_daily (
    tenant_id   text NOT NULL REFERENCES tenants (id),
    bucket      timestamptz NOT NULL,
    refused_402 bigint NOT NULL DEFAULT 0,
    refused_429 bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, bucket)
);

-- "Last used" per key on the keys page: one index probe per key instead of a scan of the tenant's usage.
CREATE INDEX usage_daily_by_key ON usage_daily (tenant_id, api_key_id, bucket DESC);
