-- name: insert_webhook_endpoint
INSERT INTO webhook_endpoints (id, tenant_id, name, url, event_types, secret)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *;

-- name: count_webhook_endpoints
SELECT count(*) FROM webhook_endpoints WHERE tenant_id = $1 AND deleted_at IS NULL;

-- name: get_webhook_endpoint
SELECT * FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL;

-- name: list_webhook_endpoints
-- Oldest first; $2 the last id of the previous page.
SELECT * FROM webhook_endpoints
 WHERE tenant_id = $1 AND deleted_at IS NULL AND ($2::text IS NULL OR id > $2)
 ORDER BY id LIMIT $3;

-- name: update_webhook_endpoint
-- NULL leaves a field as it is.
UPDATE webhook_endpoints
   SET name = COALESCE($3, name), url = COALESCE($4, url), event_types = COALESCE($5, event_types),
       updated_at = CASE WHEN ($3 IS NOT NULL AND $3 <> name) OR ($4 IS NOT NULL AND $4 <> url)
                          OR ($5::text[] IS NOT NULL AND $5 <> event_types) THEN now() ELSE updated_at END
 WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL
RETURNING *;

-- name: delete_webhook_endpoint
-- Its pending deliveries end as failed: nobody will receive them.
WITH gone AS (
    UPDATE webhook_endpoints SET deleted_at = now() WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL
    RETURNING id
), stopped AS (
    UPDATE webhook_deliveries SET status = 'failed', last_error = 'endpoint deleted'
     WHERE endpoint_id IN (SELECT id FROM gone) AND status = 'pending'
)
SELECT id FROM gone;

-- name: rotate_webhook_secret
-- $3 the new secret; $4 how long the current one keeps signing (NULL: not at all).
UPDATE webhook_endpoints
   SET previous_secret = CASE WHEN $4::float8 IS NULL THEN NULL ELSE secret END,
       previous_secret_expires_at = CASE WHEN $4::float8 IS NULL THEN NULL
                                         ELSE now() + make_interval(secs => $4::float8) END,
       secret = $3, updated_at = now()
 WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL
RETURNING *;

-- name: claim_webhook_deliveries
-- Leases up to $3 due deliveries for gateway $1 for $2 seconds; several gateways never send one twice at once.
UPDATE webhook_deliveries d
   SET lease_owner = $1, lease_until = now() + make_interval(secs => $2::float8)
 WHERE d.id IN (SELECT id FROM webhook_deliveries
                 WHERE status = 'pending' AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now())
                 ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
RETURNING d.id, d.event_id, d.endpoint_id, d.attempts;

-- name: delivery_parts
SELECT ev.id AS event_id, ev.type, ev.data, ev.created_at, en.url, en.secret, en.previous_secret,
       en.previous_secret_expires_at > now() AS previous_valid, en.deleted_at IS NOT NULL AS endpoint_deleted
  FROM webhook_events ev, webhook_endpoints en
 WHERE ev.id = $1 AND en.id = $2;

-- name: record_webhook_attempt
-- $3 the attempt's number; $7 'delivered', 'pending' (retry at $8) or 'failed' (no more retries).
WITH attempt AS (
    INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error, duration_ms)
    VALUES ($1, $3, $4, $5, $6)
)
UPDATE webhook_deliveries
   SET attempts = $3, last_status_code = $4, last_error = $5, status = $7,
       next_attempt_at = COALESCE($8, next_attempt_at), lease_owner = NULL, lease_until = NULL,
       delivered_at = CASE WHEN $7 = 'delivered' THEN now() ELSE delivered_at END
 WHERE id = $1 AND lease_owner = $2;

-- name: list_webhook_deliveries
-- Newest first; $3 the last id of the previous page.
SELECT d.id, d.event_id, ev.type AS event_type, d.endpoint_id, d.status, d.attempts, d.last_status_code,
       d.last_error, d.next_attempt_at, d.delivered_at, d.created_at
  FROM webhook_deliveries d JOIN webhook_events ev ON ev.id = d.event_id
 WHERE d.tenant_id = $1 AND d.endpoint_id = $2
   AND ($3::text IS NULL OR (d.created_at, d.id) < (SELECT created_at, id FROM webhook_deliveries WHERE id = $3))
 ORDER BY d.created_at DESC, d.id DESC LIMIT $4;

-- name: replay_webhook_delivery
-- Due again now, with the same event (so the same webhook-id); attempts count on.
UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), lease_owner = NULL, lease_until = NULL
 WHERE id = $1 AND tenant_id = $2 AND endpoint_id = $3
   AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE deleted_at IS NULL)
RETURNING id;

-- name: operator_webhook_deliveries
-- The operator's view (the CLI): newest first, a tenant's or everyone's, optionally one status.
SELECT d.id, d.tenant_id, d.endpoint_id, d.event_id, ev.type AS event_type, d.status, d.attempts,
       d.last_status_code, d.last_error, d.next_attempt_at, d.delivered_at, d.created_at
  FROM webhook_deliveries d JOIN webhook_events ev ON ev.id = d.event_id
 WHERE ($1::text IS NULL OR d.tenant_id = $1) AND ($2::text IS NULL OR d.status = $2)
 ORDER BY d.created_at DESC, d.id DESC LIMIT $3;

-- name: operator_replay_webhook_delivery
UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), lease_owner = NULL, lease_until = NULL
 WHERE id = $1 AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE deleted_at IS NULL)
RETURNING id, tenant_id;
