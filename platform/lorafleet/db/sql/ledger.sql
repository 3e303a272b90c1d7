-- name: insert_usage_rows
-- One statement per batch, so a batch is all or nothing: insert the rows (a request id already
-- recorded is skipped, never counted twice), release their reservations, add them to the hourly
-- and daily rollups and settle the tenants' accounts. Only rows actually inserted count, so a
-- replayed batch changes nothing.
WITH input AS (
    SELECT * FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[],
        $9::bool[], $10::bigint[], $11::bigint[], $12::text[], $13::timestamptz[], $14::timestamptz[],
        $15::bigint[], $16::bigint[], $17::text[], $18::bigint[], $19::bigint[], $20::bigint[], $21::text[])
    AS t(request_id, tenant_id, api_key_id, base_model_id, model, endpoint, outcome, http_status,
         streamed, prompt_tokens, completion_tokens, worker_url, started_at, finished_at, ttft_ms, duration_ms,
         adapter_id, cost_pico_usd, price_id, cached_prompt_tokens, batch_id)
), inserted AS (
    INSERT INTO usage_ledger (
        request_id, tenant_id, api_key_id, base_model_id, model, endpoint, outcome, http_status,
        streamed, prompt_tokens, completion_tokens, worker_url, started_at, finished_at, ttft_ms, duration_ms,
        adapter_id, cost_pico_usd, price_id, cached_prompt_tokens, batch_id)
    SELECT * FROM input
    ON CONFLICT (request_id) DO NOTHING
    RETURNING tenant_id, api_key_id, base_model_id, adapter_id, lorafleet_usage_kind(endpoint, batch_id) AS kind,
              started_at, outcome, prompt_tokens, completion_tokens, cost_pico_usd, cached_prompt_tokens
), released AS (
    DELETE FROM reservations r USING input i WHERE r.request_id = i.request_id
    RETURNING r.tenant_id, r.amount_micro_usd
), hourly AS (
    INSERT INTO usage_hourly AS u
    (tenant_id, bucket, api_key_id, base_model_id, adapter_id, kind, requests, errors, prompt_tokens,
     completion_tokens, cost_pico_usd, cached_prompt_tokens)
    SELECT tenant_id, date_trunc('hour', started_at, 'UTC'), api_key_id, base_model_id, adapter_id, kind, count(*),
           count(*) FILTER (WHERE outcome <> 'success'), sum(prompt_tokens), sum(completion_tokens), sum(cost_pico_usd),
           sum(cached_prompt_tokens)
    FROM inserted GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (tenant_id, bucket, api_key_id, base_model_id, adapter_id, kind) DO UPDATE
    SET requests = u.requests + excluded.requests, errors = u.errors + excluded.errors,
        prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = u.completion_tokens + excluded.completion_tokens,
        cost_pico_usd = u.cost_pico_usd + excluded.cost_pico_usd,
        cached_prompt_tokens = u.cached_prompt_tokens + excluded.cached_prompt_tokens
), daily AS (
    INSERT INTO usage_daily AS u
    (tenant_id, bucket, api_key_id, base_model_id, adapter_id, kind, requests, errors, prompt_tokens,
     completion_tokens, cost_pico_usd, cached_prompt_tokens)
    SELECT tenant_id, date_trunc('day', started_at, 'UTC'), api_key_id, base_model_id, adapter_id, kind, count(*),
           count(*) FILTER (WHERE outcome <> 'success'), sum(prompt_tokens), sum(completion_tokens), sum(cost_pico_usd),
           sum(cached_prompt_tokens)
    FROM inserted GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (tenant_id, bucket, api_key_id, base_model_id, adapter_id, kind) DO UPDATE
    SET requests = u.requests + excluded.requests, errors = u.errors + excluded.errors,
        prompt_tokens = u.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = u.completion_tokens + excluded.completion_tokens,
        cost_pico_usd = u.cost_pico_usd + excluded.cost_pico_usd,
        cached_prompt_tokens = u.cached_prompt_tokens + excluded.cached_prompt_tokens
), spend AS (
    SELECT tenant_id, sum(cost_pico_usd) AS total,
           coalesce(sum(cost_pico_usd) FILTER (WHERE started_at >= date_trunc('month', now(), 'UTC')), 0) AS this_month
    FROM inserted GROUP BY tenant_id
), freed AS (
    SELECT tenant_id, sum(amount_micro_usd) AS amount, count(*) AS requests FROM released GROUP BY tenant_id
), changes AS (
    SELECT coalesce(s.tenant_id, f.tenant_id) AS tenant_id, coalesce(s.total, 0) AS total,
           coalesce(s.this_month, 0) AS this_month, coalesce(f.amount, 0) AS freed, coalesce(f.requests, 0) AS requests
    FROM spend s FULL JOIN freed f ON f.tenant_id = s.tenant_id
)
UPDATE tenant_accounts a
SET spent_total_pico_usd = a.spent_total_pico_usd + c.total,
    period_spent_pico_usd = CASE WHEN a.exact_period_start = date_trunc('month', now(), 'UTC')::date
                                 THEN a.period_spent_pico_usd ELSE 0 END + c.this_month,
    exact_period_start = date_trunc('month', now(), 'UTC')::date,
    -- What admission compares: the exact amounts rounded up (billing/pricing.py; div truncates, both ≥ 0).
    spent_total_micro_usd = div(a.spent_total_pico_usd + c.total + 999999, 1000000),
    period_spent_micro_usd = div(CASE WHEN a.exact_period_start = date_trunc('month', now(), 'UTC')::date
                                      THEN a.period_spent_pico_usd ELSE 0 END + c.this_month + 999999, 1000000),
    period_start = date_trunc('month', now(), 'UTC')::date,
    reserved_micro_usd = a.reserved_micro_usd - c.freed,
    in_flight = a.in_flight - c.requests,
    updated_at = now()
FROM changes c WHERE a.tenant_id = c.tenant_id;
