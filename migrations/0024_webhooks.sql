-- Webhooks (issue 31, part 2): endpoints per tenant, an outbox of events written by the changes that
-- cause them (triggers on the tables whose rows change: same transaction, so none is lost and none
-- is sent for a rolled-back change), one delivery per endpoint and event, and every attempt's log.
CREATE TABLE webhook_endpoints (
    id                       TEXT PRIMARY KEY,                -- we_…
    tenant_id                TEXT NOT NULL REFERENCES tenants (id),
    name                     TEXT NOT NULL,
    url                      TEXT NOT NULL,
    event_types              TEXT[] NOT NULL,
    -- The signing secret must be readable to sign (HMAC): stored as is, shown to the tenant once.
    secret                   TEXT NOT NULL,
    previous_secret          TEXT,                            -- still signs until previous_secret_expires_at
    previous_secret_expires_at TIMESTAMPTZ,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at               TIMESTAMPTZ
);
CREATE INDEX webhook_endpoints_by_tenant ON webhook_endpoints (tenant_id, id) WHERE deleted_at IS NULL;

CREATE TABLE webhook_events (
    id          TEXT PRIMARY KEY,                             -- evt_…: the webhook-id of every delivery of it
    tenant_id   TEXT NOT NULL,
    type        TEXT NOT NULL,
    data        JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,                        -- whd_…
    event_id         TEXT NOT NULL REFERENCES webhook_events (id),
    endpoint_id      TEXT NOT NULL REFERENCES webhook_endpoints (id),
    tenant_id        TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner      TEXT,                                    -- the gateway sending it now
    lease_until      TIMESTAMPTZ,
    last_status_code INTEGER,
    last_error       TEXT,
    delivered_at     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, created_at DESC);

CREATE TABLE webhook_attempts (
    delivery_id  TEXT NOT NULL REFERENCES webhook_deliveries (id),
    attempt      INTEGER NOT NULL,
    at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    status_code  INTEGER,                                     -- NULL: no answer (refused, timeout, network)
    error        TEXT,
    duration_ms  INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- An event fans out to every live endpoint of its tenant subscribed to its type, in its own transaction.
CREATE FUNCTION webhook_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (id, event_id, endpoint_id, tenant_id)
    SELECT 'whd_' || substr(md5(NEW.id || e.id), 1, 24), NEW.id, e.id, NEW.tenant_id
      FROM webhook_endpoints e
     WHERE e.tenant_id = NEW.tenant_id AND e.deleted_at IS NULL AND NEW.type = ANY(e.event_types);
    RETURN NULL;
END $$;
CREATE TRIGGER webhook_events_fan_out AFTER INSERT ON webhook_events
    FOR EACH ROW EXECUTE FUNCTION webhook_fan_out();

-- A batch or a fine-tuning job reaching an end is an event, written by the very statement that ends it.
CREATE FUNCTION webhook_emit_on_status() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kind TEXT := TG_ARGV[0];   -- 'batch' or 'fine_tuning.job'
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NEW.status = ANY(TG_ARGV[1]::text[]) THEN
        INSERT INTO webhook_events (id, tenant_id, type, data)
        VALUES ('evt_' || replace(gen_random_uuid()::text, '-', ''), NEW.tenant_id, kind || '.' || NEW.status,
                jsonb_build_object('id', NEW.id));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER batches_webhook AFTER UPDATE OF status ON batches
    FOR EACH ROW EXECUTE FUNCTION webhook_emit_on_status('batch', '{completed,failed,expired,cancelled}');
CREATE TRIGGER fine_tuning_jobs_webhook AFTER UPDATE OF status ON fine_tuning_jobs
    FOR EACH ROW EXECUTE FUNCTION webhook_emit_on_status('fine_tuning.job', '{succeeded,failed,cancelled}');

-- Webhook endpoints take scopes of their own; the tenant's key administrators get them (as in 0023).
UPDATE api_keys SET scopes = scopes || ARRAY['webhooks:read', 'webhooks:write']
 WHERE 'keys:write' = ANY(scopes) AND NOT 'webhooks:write' = ANY(scopes);

-- ---- Projects (issue 31, part 1; the data model first) -------------------------------------------
-- A tenant is an OpenAI organization; a project lives inside it. Every tenant gets a default project
-- that owns everything it has today; a key belongs to one project, and each object records the
-- project of the key that made it (the tenant's default project where no key is known).
CREATE TABLE projects (
    id           TEXT PRIMARY KEY,                           -- proj_…
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    name         TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    is_default   BOOLEAN NOT NULL DEFAULT false,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    archived_at  TIMESTAMPTZ
);
CREATE UNIQUE INDEX projects_one_default ON projects (tenant_id) WHERE is_default;
CREATE INDEX projects_by_tenant ON projects (tenant_id, id);

INSERT INTO projects (id, tenant_id, name, is_default, created_at)
SELECT 'proj_' || substr(md5('default:' || id), 1, 24), id, 'Default project', true, created_at FROM tenants;

CREATE FUNCTION default_project_for_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO projects (id, tenant_id, name, is_default, created_at)
    VALUES ('proj_' || substr(md5('default:' || NEW.id), 1, 24), NEW.id, 'Default project', true, NEW.created_at);
    RETURN NULL;
END $$;
CREATE TRIGGER tenants_default_project AFTER INSERT ON tenants
    FOR EACH ROW EXECUTE FUNCTION default_project_for_tenant();

-- The project a new row belongs to: its key's (api_key_id, when the table has one), else the default.
CREATE FUNCTION set_project_id() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    key_id TEXT := to_jsonb(NEW) ->> 'api_key_id';
BEGIN
    IF NEW.project_id IS NULL AND key_id IS NOT NULL THEN
        SELECT project_id INTO NEW.project_id FROM api_keys WHERE id = key_id;
    END IF;
    IF NEW.project_id IS NULL THEN
        SELECT id INTO NEW.project_id FROM projects WHERE tenant_id = NEW.tenant_id AND is_default;
    END IF;
    RETURN NEW;
END $$;

ALTER TABLE api_keys ADD COLUMN project_id TEXT REFERENCES projects (id);
UPDATE api_keys k SET project_id = p.id FROM projects p WHERE p.tenant_id = k.tenant_id AND p.is_default;
CREATE TRIGGER api_keys_project BEFORE INSERT ON api_keys FOR EACH ROW EXECUTE FUNCTION set_project_id();

ALTER TABLE files ADD COLUMN project_id TEXT;
ALTER TABLE adapters ADD COLUMN project_id TEXT;
ALTER TABLE fine_tuning_jobs ADD COLUMN project_id TEXT;
ALTER TABLE batches ADD COLUMN project_id TEXT;
ALTER TABLE responses ADD COLUMN project_id TEXT;
ALTER TABLE webhook_endpoints ADD COLUMN project_id TEXT;
UPDATE files t SET project_id = p.id FROM projects p WHERE p.tenant_id = t.tenant_id AND p.is_default;
UPDATE adapters t SET project_id = p.id FROM projects p WHERE p.tenant_id = t.tenant_id AND p.is_default;
UPDATE fine_tuning_jobs t SET project_id = k.project_id FROM api_keys k WHERE k.id = t.api_key_id;
UPDATE batches t SET project_id = k.project_id FROM api_keys k WHERE k.id = t.api_key_id;
UPDATE responses t SET project_id = k.project_id FROM api_keys k WHERE k.id = t.api_key_id;
CREATE TRIGGER files_project BEFORE INSERT ON files FOR EACH ROW EXECUTE FUNCTION set_project_id();
CREATE TRIGGER adapters_project BEFORE INSERT ON adapters FOR EACH ROW EXECUTE FUNCTION set_project_id();
CREATE TRIGGER fine_tuning_jobs_project BEFORE INSERT ON fine_tuning_jobs
    FOR EACH ROW EXECUTE FUNCTION set_project_id();
CREATE TRIGGER batches_project BEFORE INSERT ON batches FOR EACH ROW EXECUTE FUNCTION set_project_id();
CREATE TRIGGER responses_project BEFORE INSERT ON responses FOR EACH ROW EXECUTE FUNCTION set_project_id();
CREATE TRIGGER webhook_endpoints_project BEFORE INSERT ON webhook_endpoints
    FOR EACH ROW EXECUTE FUNCTION set_project_id();

-- Managing the organization's projects takes the organization:admin scope (the Admin API key's
-- notion); the keys that could manage the tenant's keys get it.
UPDATE api_keys SET scopes = array_append(scopes, 'organization:admin')
 WHERE 'keys:write' = ANY(scopes) AND NOT 'organization:admin' = ANY(scopes);
