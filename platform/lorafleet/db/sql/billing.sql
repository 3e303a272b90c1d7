-- name: insert_price
-- $7: the cached-prompt price; NULL: the prompt price (no discount). $8: the batch discount (basis points).
INSERT INTO prices (base_model_id, prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok,
                    adapter_surcharge_micro_usd_per_mtok, effective_at, training_micro_usd_per_mtok,
                    cached_prompt_micro_usd_per_mtok, batch_discount_bps)
VALUES ($1, $2::bigint, $3, $4, $5, $6, coalesce($7::bigint, $2::bigint), $8)
RETURNING id, base_model_id, prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok,
          adapter_surcharge_micro_usd_per_mtok, effective_at, created_at, training_micro_usd_per_mtok,
          cached_prompt_micro_usd_per_mtok, batch_discount_bps;

-- name: list_prices
SELECT p.id, p.base_model_id, m.name AS base_model, p.prompt_micro_usd_per_mtok, p.completion_micro_usd_per_mtok,
       p.adapter_surcharge_micro_usd_per_mtok, p.effective_at, p.created_at, p.training_micro_usd_per_mtok,
       p.cached_prompt_micro_usd_per_mtok, p.batch_discount_bps
FROM prices p JOIN base_models m ON m.id = p.base_model_id
ORDER BY m.name, p.effective_at;

-- name: page_prices
-- Every price version in the order they were set; $1: the last id of the previous page, $2 rows.
SELECT p.id, p.base_model_id, m.name AS base_model, p.prompt_micro_usd_per_mtok, p.completion_micro_usd_per_mtok,
       p.adapter_surcharge_micro_usd_per_mtok, p.effective_at, p.created_at, p.training_micro_usd_per_mtok,
       p.cached_prompt_micro_usd_per_mtok, p.batch_discount_bps
FROM prices p JOIN base_models m ON m.id = p.base_model_id
WHERE $1::bigint IS NULL OR p.id > $1
ORDER BY p.id LIMIT $2;

-- name: get_base_model_by_name
SELECT id, name, max_model_len FROM base_models WHERE name = $1;

-- name: get_accounts
-- One tenant's account ($1), or every tenant's ($1 NULL); spend this period is 0 once the month turned.
-- Spend is exact (pico-USD); accounts.py rounds it once for display.
SELECT a.tenant_id, t.name AS tenant_name, a.billing_mode, a.monthly_spend_limit_micro_usd, a.max_concurrent_requests,
       a.credit_granted_micro_usd, a.spent_total_pico_usd,
       CASE WHEN a.exact_period_start = date_trunc('month', now(), 'UTC')::date THEN a.period_spent_pico_usd ELSE 0 END
           AS period_spent_pico_usd,
       date_trunc('month', now(), 'UTC')::date AS period_start,
       a.reserved_micro_usd, a.in_flight, a.stripe_customer_id
FROM tenant_accounts a JOIN tenants t ON t.id = a.tenant_id
WHERE $1::text IS NULL OR a.tenant_id = $1
ORDER BY t.created_at, t.id;

-- name: page_accounts
-- Every tenant's account, oldest tenant first; $1: the last tenant id of the previous page, $2 rows.
SELECT a.tenant_id, t.name AS tenant_name, a.billing_mode, a.monthly_spend_limit_micro_usd, a.max_concurrent_requests,
       a.credit_granted_micro_usd, a.spent_total_pico_usd,
       CASE WHEN a.exact_period_start = date_trunc('month', now(), 'UTC')::date THEN a.period_spent_pico_usd ELSE 0 END
           AS period_spent_pico_usd,
       date_trunc('month', now(), 'UTC')::date AS period_start,
       a.reserved_micro_usd, a.in_flight, a.stripe_customer_id
FROM tenant_accounts a JOIN tenants t ON t.id = a.tenant_id
WHERE $1::text IS NULL OR (t.created_at, t.id) > (SELECT c.created_at, c.id FROM tenants c WHERE c.id = $1)
ORDER BY t.created_at, t.id LIMIT $2;

-- name: update_account_limits
-- $2..$4 apply only where the matching $5..$7 flag says the caller set them (NULL clears a limit).
UPDATE tenant_accounts SET
    billing_mode = CASE WHEN $5 THEN $2 ELSE billing_mode END,
    monthly_spend_limit_micro_usd = CASE WHEN $6 THEN $3 ELSE monthly_spend_limit_micro_usd END,
    max_concurrent_requests = CASE WHEN $7 THEN $4 ELSE max_concurrent_requests END,
    updated_at = now()
WHERE tenant_id = $1
RETURNING tenant_id;

-- name: grant_credit
WITH grant_row AS (
    INSERT INTO credit_grants (id, tenant_id, amount_micro_usd, reason) VALUES ($1, $2, $3, $4)
    RETURNING id, tenant_id, amount_micro_usd, reason, created_at
), account AS (
    UPDATE tenant_accounts a SET credit_granted_micro_usd = a.credit_granted_micro_usd + g.amount_micro_usd,
                                 updated_at = now()
    FROM grant_row g WHERE a.tenant_id = g.tenant_id
)
SELECT id, tenant_id, amount_micro_usd, reason, created_at FROM grant_row;

-- name: update_key_limits
UPDATE api_keys SET
    requests_per_minute = CASE WHEN $4 THEN $2 ELSE requests_per_minute END,
    tokens_per_minute = CASE WHEN $5 THEN $3 ELSE tokens_per_minute END
WHERE id = $1
RETURNING id, tenant_id, requests_per_minute, tokens_per_minute;
