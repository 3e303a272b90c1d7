-- name: insert_dashboard_session
INSERT INTO dashboard_sessions (token_hash, tenant_id, key_id, csrf_token, expires_at)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5));

-- name: get_dashboard_session
-- A session is valid while it has not expired and, if a key signed it in, that key still works;
-- it can do what that key can, read live (a key's scopes never change, but it may be revoked).
SELECT s.tenant_id, s.key_id, s.csrf_token, t.name AS tenant_name, k.scopes AS key_scopes, k.expires_at AS key_expires_at
FROM dashboard_sessions s
LEFT JOIN tenants t ON t.id = s.tenant_id
LEFT JOIN api_keys k ON k.id = s.key_id
WHERE s.token_hash = $1 AND s.expires_at > now()
  AND (s.key_id IS NULL OR (k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())));

-- name: delete_dashboard_session
DELETE FROM dashboard_sessions WHERE token_hash = $1;

-- name: delete_expired_dashboard_sessions
DELETE FROM dashboard_sessions WHERE expires_at < now();

-- name: insert_login_link
INSERT INTO dashboard_login_links (token_hash, tenant_id, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3));

-- name: use_login_link
-- One use only: the first caller gets the tenant, every later one nothing.
UPDATE dashboard_login_links SET used_at = now()
WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
RETURNING tenant_id;

-- name: dashboard_daily_cost
-- Daily cost per base model / adapter over a range, for the overview chart. Each cost here is the
-- exact sum rounded half up once to whole micro-USD (billing/pricing.py; div truncates, sums ≥ 0).
SELECT u.bucket, coalesce(a.name, m.name) AS series, div(sum(u.cost_pico_usd) + 500000, 1000000)::bigint AS cost_micro_usd
FROM usage_daily u JOIN base_models m ON m.id = u.base_model_id LEFT JOIN adapters a ON a.id = u.adapter_id
WHERE u.tenant_id = $1 AND u.bucket >= $2
GROUP BY 1, 2 ORDER BY 1, 2;

-- name: dashboard_totals
-- Requests, tokens and cost since $2, a day boundary (from the daily rollup: a month is ~30 rows per key and adapter).
SELECT coalesce(sum(requests), 0)::bigint AS requests, coalesce(sum(errors), 0)::bigint AS errors,
       coalesce(sum(prompt_tokens + completion_tokens), 0)::bigint AS tokens,
       div(coalesce(sum(cost_pico_usd), 0) + 500000, 1000000)::bigint AS cost_micro_usd
FROM usage_daily WHERE tenant_id = $1 AND bucket >= $2;

-- name: dashboard_top_adapters
SELECT a.id, a.name, sum(u.requests)::bigint AS requests, div(sum(u.cost_pico_usd) + 500000, 1000000)::bigint AS cost_micro_usd
FROM usage_daily u JOIN adapters a ON a.id = u.adapter_id
WHERE u.tenant_id = $1 AND u.bucket >= $2 AND u.adapter_id IS NOT NULL
GROUP BY a.id, a.name ORDER BY cost_micro_usd DESC, a.name LIMIT $3;

-- name: dashboard_adapter_activity
-- Requests this month and the last day used, per adapter of the tenant (daily rollup: small).
SELECT adapter_id, sum(requests)::bigint AS requests, max(bucket) AS last_used
FROM usage_daily WHERE tenant_id = $1 AND adapter_id IS NOT NULL AND bucket >= $2
GROUP BY adapter_id;

-- name: dashboard_key_last_used
-- The day each key was last used (one index probe per key).
SELECT k.id AS api_key_id, u.bucket AS last_used
FROM api_keys k
CROSS JOIN LATERAL (SELECT bucket FROM usage_daily d WHERE d.tenant_id = $1 AND d.api_key_id = k.id
                    ORDER BY bucket DESC LIMIT 1) u
WHERE k.tenant_id = $1;

-- name: dashboard_refusals
-- 402 and 429 answers this month (recorded by admission; they have no ledger row).
SELECT coalesce(sum(refused_402), 0)::bigint AS quota, coalesce(sum(refused_429), 0)::bigint AS rate
FROM refusals_daily WHERE tenant_id = $1 AND bucket >= $2;

-- name: adapter_names
SELECT a.id, a.name, t.name AS tenant_name FROM adapters a JOIN tenants t ON t.id = a.tenant_id WHERE a.id = ANY($1);
