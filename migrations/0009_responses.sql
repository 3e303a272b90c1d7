-- Stored responses of the Responses API (POST /v1/responses with store: true, OpenAI's default):
-- the tenant's data, read back only by the same tenant, chained with previous_response_id, deleted on
-- request or once expires_at (LORAFLEET_RESPONSES_RETENTION_DAYS) has passed.
CREATE TABLE responses (
    id                   text PRIMARY KEY,
    tenant_id            text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    api_key_id           text NOT NULL,
    -- No foreign key: an earlier turn may be deleted or expire while later ones stay readable.
    previous_response_id text,
    input                jsonb NOT NULL,   -- this turn's input items (canonical), not the turns before it
    document             jsonb NOT NULL,   -- the Response object as it was answered
    created_at           timestamptz NOT NULL DEFAULT now(),
    expires_at           timestamptz NOT NULL
);
CREATE INDEX responses_expires_at ON responses (expires_at);

-- The ledger names the new routes.
ALTER TABLE usage_ledger DROP CONSTRAINT usage_ledger_endpoint_check;
ALTER TABLE usage_ledger ADD CONSTRAINT usage_ledger_endpoint_check
    CHECK (endpoint IN ('chat.completions', 'completions', 'responses', 'embeddings'));
