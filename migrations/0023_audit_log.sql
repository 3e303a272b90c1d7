-- The audit log (issue 31, part 3): one append-only row per change made by an API key, a dashboard
-- session or the operator, and per refused attempt on the operator API. No foreign keys: a row must
-- outlive what it describes (a deleted key, a tenant), and nothing may cascade into it.
CREATE TABLE audit_log (
    seq          BIGSERIAL PRIMARY KEY,           -- the order of events (cursors compare it)
    id           TEXT NOT NULL UNIQUE,            -- audit_log-…, the public id
    tenant_id    TEXT,                            -- whose organization it happened in; NULL: fleet-wide (prices)
    type         TEXT NOT NULL,                   -- OpenAI's event type names where they exist
    effective_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor_kind   TEXT NOT NULL CHECK (actor_kind IN ('api_key', 'session', 'operator', 'anonymous')),
    actor_id     TEXT,                            -- key_…, a session's digest prefix, 'operator'; NULL: anonymous
    actor_key_id TEXT,                            -- the key a dashboard session signed in with
    resource_id  TEXT,                            -- the object changed
    details      JSONB NOT NULL DEFAULT '{}',     -- the fields changed (secrets dropped before they get here)
    ip_address   TEXT,
    user_agent   TEXT,
    request_id   TEXT NOT NULL,
    status       INTEGER NOT NULL                 -- the answer's HTTP status
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, seq DESC);

-- Append-only, held by the database itself: no UPDATE, DELETE or TRUNCATE by anyone the app connects as.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Reading the log takes a scope of its own. The keys that could already manage the tenant's keys (its
-- administrators, in effect) get it, so an organization can read its log without asking the operator.
UPDATE api_keys SET scopes = array_append(scopes, 'audit_logs:read')
 WHERE 'keys:write' = ANY(scopes) AND NOT 'audit_logs:read' = ANY(scopes);
