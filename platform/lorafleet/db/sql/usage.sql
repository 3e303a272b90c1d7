-- name: usage_report
-- $4..$6: group by key / base model / adapter; $7..$9: filters (NULL: all); $10: 'hour' or 'day'.
-- Run with custom plans (force_custom_plans): the rollup not asked for and the unused CASEs fold away.
WITH rollup AS (
    SELECT * FROM usage_hourly WHERE $10 = 'hour' AND tenant_id = $1 AND bucket >= $2 AND bucket < $3
    UNION ALL
    SELECT * FROM usage_daily WHERE $10 = 'day' AND tenant_id = $1 AND bucket >= $2 AND bucket < $3
), grouped AS (
    SELECT u.bucket,
           CASE WHEN $4 THEN u.api_key_id END AS api_key_id,
           CASE WHEN $5 THEN u.base_model_id END AS base_model_id,
           CASE WHEN $6 THEN u.adapter_id END AS adapter_id,
           u.kind,  -- always apart: requests, batch and fine-tuning are separate lines
           sum(u.requests)::bigint AS requests, sum(u.errors)::bigint AS errors,
           sum(u.prompt_tokens)::bigint AS prompt_tokens, sum(u.completion_tokens)::bigint AS completion_tokens,
           sum(u.cached_prompt_tokens)::bigint AS cached_prompt_tokens,
           sum(u.cost_pico_usd) AS cost_pico_usd  -- numeric: exact, rounded once by the caller
    FROM rollup u
    WHERE ($7::text IS NULL OR u.api_key_id = $7) AND ($8::text IS NULL OR u.base_model_id = $8)
      AND ($9::text IS NULL OR u.adapter_id = $9)
    GROUP BY 1, 2, 3, 4, 5
)
SELECT g.*, m.name AS model, a.name AS adapter
FROM grouped g LEFT JOIN base_models m ON m.id = g.base_model_id LEFT JOIN adapters a ON a.id = g.adapter_id
ORDER BY g.bucket, g.api_key_id, g.base_model_id, g.adapter_id NULLS FIRST, g.kind DESC;

-- name: find_tenant_adapter
-- An adapter of the tenant by id or by name (the live one, else the most recent deleted one).
SELECT id FROM adapters WHERE tenant_id = $1 AND (id = $2 OR name = $2)
ORDER BY (status = 'ready') DESC, created_at DESC LIMIT 1;

-- name: rebuild_rollups_lock
LOCK TABLE usage_hourly, usage_daily, tenant_accounts IN EXCLUSIVE MODE;

-- name: clear_rollups_hourly
DELETE FROM usage_hourly;

-- name: clear_rollups_daily
DELETE FROM usage_daily;

-- name: rebuild_rollups_hourly
INSERT INTO usage_hourly (tenant_id, bucket, api_key_id, base_model_id, adapter_id, kind, requests, errors,
                          prompt_tokens, completion_tokens, cost_pico_usd, cached_prompt_tokens)
SELECT tenant_id, date_trunc('hour', started_at, 'UTC'), api_key_id, base_model_id, adapter_id,
       lorafleet_usage_kind(endpoint, batch_id), count(*), count(*) FILTER (WHERE outcome <> 'success'),
       sum(prompt_tokens), sum(completion_tokens), sum(cost_pico_usd), sum(cached_prompt_tokens)
FROM usage_ledger GROUP BY 1, 2, 3, 4, 5, 6;

-- name: rebuild_rollups_daily
INSERT INTO usage_daily (tenant_id, bucket, api_key_id, base_model_id, adapter_id, kind, requests, errors,
                         prompt_tokens, completion_tokens, cost_pico_usd, cached_prompt_tokens)
SELECT tenant_id, date_trunc('day', bucket, 'UTC'), api_key_id, base_model_id, adapter_id, kind, sum(requests),
       sum(errors), sum(prompt_tokens), sum(completion_tokens), sum(cost_pico_usd), sum(cached_prompt_tokens)
FROM usage_hourly GROUP BY 1, 2, 3, 4, 5, 6;

-- name: rebuild_account_spend
-- Settled spend is derived from the ledger too, exactly, with admission's micro-USD counters rounded
-- up as the ledger writer keeps them; reservations and limits are left alone.
UPDATE tenant_accounts a SET
    spent_total_pico_usd = coalesce(s.total, 0),
    period_spent_pico_usd = coalesce(s.this_month, 0),
    exact_period_start = date_trunc('month', now(), 'UTC')::date,
    spent_total_micro_usd = div(coalesce(s.total, 0) + 999999, 1000000),
    period_spent_micro_usd = div(coalesce(s.this_month, 0) + 999999, 1000000),
    period_start = date_trunc('month', now(), 'UTC')::date
FROM tenants t LEFT JOIN (
    SELECT tenant_id, sum(cost_pico_usd) AS total,
           sum(cost_pico_usd) FILTER (WHERE started_at >= date_trunc('month', now(), 'UTC')) AS this_month
    FROM usage_ledger GROUP BY tenant_id
) s ON s.tenant_id = t.id
WHERE a.tenant_id = t.id;

-- name: force_custom_plans
-- The usage queries switch grouping on and off by parameter; a plan made for the actual values
-- folds the unused CASEs away and runs ~3x faster than a generic one (measured: 13 vs 36 ms).
SET LOCAL plan_cache_mode = force_custom_plan;
