-- name: ping
SELECT 1;

-- name: lock_migrations
SELECT pg_advisory_lock($1);

-- name: unlock_migrations
SELECT pg_advisory_unlock($1);

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now());

-- name: applied_migrations
SELECT version, name, checksum FROM schema_migrations;

-- name: record_migration
INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3);

-- name: expire_idempotency_key
DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 AND created_at < now() - make_interval(hours => $3);

-- name: claim_idempotency_key
-- The first request with this key claims it.
INSERT INTO idempotency_keys (owner, key, fingerprint, status) VALUES ($1, $2, $3, 'in_progress')
ON CONFLICT (owner, key) DO NOTHING
RETURNING owner;

-- name: get_idempotency_key
SELECT fingerprint, status, response FROM idempotency_keys WHERE owner = $1 AND key = $2;

-- name: complete_idempotency_key
UPDATE idempotency_keys SET status = 'done', response = $3 WHERE owner = $1 AND key = $2;

-- name: release_idempotency_key
DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 AND status = 'in_progress';

-- name: forget_idempotency_keys
DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1);
