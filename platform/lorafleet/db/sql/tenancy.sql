-- name: insert_tenant
-- The tenant and its account (postpaid, no limits) in one statement.
WITH tenant AS (
    INSERT INTO tenants (id, name) VALUES ($1, $2) RETURNING id, name, created_at
), account AS (
    INSERT INTO tenant_accounts (tenant_id) SELECT id FROM tenant
)
SELECT id, name, created_at FROM tenant;

-- name: get_tenant
SELECT id, name, created_at FROM tenants WHERE id = $1;

-- name: list_tenants
-- Every tenant, oldest first (the order of get_accounts).
SELECT id, name, created_at FROM tenants ORDER BY created_at, id;

-- name: find_tenant_by_name
SELECT id, name, created_at FROM tenants WHERE name = $1 ORDER BY created_at LIMIT 1;

-- name: insert_api_key
INSERT INTO api_keys (id, tenant_id, name, key_hash, display_prefix, mode, scopes, expires_at, parent_key_id, checksummed)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, true)
RETURNING id, tenant_id, name, display_prefix, mode, scopes, created_at, expires_at, revoked_at, parent_key_id;

-- name: list_api_keys
-- Oldest first; $2: the id of the last key of the previous page (keyset pagination), $3 rows.
SELECT id, tenant_id, name, display_prefix, mode, scopes, created_at, expires_at, revoked_at, parent_key_id
FROM api_keys k
WHERE k.tenant_id = $1
  AND ($2::text IS NULL OR (k.created_at, k.id) > (SELECT c.created_at, c.id FROM api_keys c WHERE c.id = $2 AND c.tenant_id = $1))
ORDER BY k.created_at, k.id LIMIT $3;

-- name: get_api_key
-- $2 NULL: any tenant (operator CLI); otherwise only the caller's own key.
SELECT id, tenant_id, name, display_prefix, mode, scopes, created_at, expires_at, revoked_at, parent_key_id
FROM api_keys WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2);

-- name: revoke_api_key
-- $2 NULL: any tenant (operator CLI); otherwise only the caller's own key.
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)
RETURNING id, tenant_id, name, display_prefix, mode, scopes, created_at, expires_at, revoked_at, parent_key_id;

-- name: legacy_keys_active
-- Whether any key minted before secrets carried a checksum can still authenticate.
SELECT EXISTS (SELECT 1 FROM api_keys WHERE NOT checksummed AND revoked_at IS NULL
               AND (expires_at IS NULL OR expires_at > now()));

-- name: active_key_digests
-- The first 8 bytes of the hash of every key that can still authenticate, created at or after $1
-- (a throttled address's key is looked up only when its digest is among them: gateway/key_digests.py).
SELECT substring(key_hash FROM 1 FOR 8) AS prefix, created_at FROM api_keys
WHERE created_at >= $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now());

-- name: authenticate_key
-- Also whether admission must consult the database: any rate limit, concurrency cap, spend
-- limit or prepaid credit check. Keys without any skip that round trip.
SELECT k.id AS key_id, k.tenant_id, k.scopes, k.mode, k.expires_at,
       (k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())) AS active,
       (k.requests_per_minute IS NOT NULL OR k.tokens_per_minute IS NOT NULL
        OR a.max_concurrent_requests IS NOT NULL OR a.monthly_spend_limit_micro_usd IS NOT NULL
        OR a.billing_mode = 'prepaid') AS metered
FROM api_keys k LEFT JOIN tenant_accounts a ON a.tenant_id = k.tenant_id WHERE k.key_hash = $1;

-- name: authenticate_key_id
-- authenticate_key by the key's id within its tenant (a batch line runs as the key that created it).
SELECT k.id AS key_id, k.tenant_id, k.scopes, k.mode, k.expires_at,
       (k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())) AS active,
       (k.requests_per_minute IS NOT NULL OR k.tokens_per_minute IS NOT NULL
        OR a.max_concurrent_requests IS NOT NULL OR a.monthly_spend_limit_micro_usd IS NOT NULL
        OR a.billing_mode = 'prepaid') AS metered
FROM api_keys k LEFT JOIN tenant_accounts a ON a.tenant_id = k.tenant_id WHERE k.id = $1 AND k.tenant_id = $2;

-- name: key_is_active_for_tenant
SELECT 1 FROM api_keys WHERE key_hash = $1 AND tenant_id = $2 AND revoked_at IS NULL
AND (expires_at IS NULL OR expires_at > now());
