-- name: insert_usage_rows
-- Idempotent batch insert: a request id already recorded is skipped, never counted twice.
INSERT INTO usage_ledger (
    request_id, tenant_id, api_key_id, base_model_id, model, endpoint, outcome, http_status,
    streamed, prompt_tokens, completion_tokens, worker_url, started_at, finished_at, ttft_ms, duration_ms, adapter_id)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::int[],
    $9::bool[], $10::bigint[], $11::bigint[], $12::text[], $13::timestamptz[], $14::timestamptz[],
    $15::int[], $16::int[], $17::text[])
ON CONFLICT (request_id) DO NOTHING;

-- name: get_usage_row
SELECT request_id, tenant_id, api_key_id, base_model_id, model, endpoint, outcome, http_status, streamed,
       prompt_tokens, completion_tokens, worker_url, started_at, finished_at, ttft_ms, duration_ms, adapter_id
FROM usage_ledger WHERE request_id = $1;
