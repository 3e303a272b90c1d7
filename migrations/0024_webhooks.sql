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
