-- name: admit_request
-- $7 is synchronous_commit ('on' or 'off') for this statement's own transaction: the value in force
-- at commit decides whether the commit waits for its WAL flush, and set_config(..., true) lasts
-- until then. Both FROM items are always evaluated (the function returns exactly one row).
SELECT a.verdict, a.retry_after_ms, a.requests_limit, a.requests_remaining, a.requests_reset_ms,
       a.tokens_limit, a.tokens_remaining, a.tokens_reset_ms
FROM set_config('synchronous_commit', $7, true) AS commit_mode,
     lorafleet_admit($1, $2, $3, $4, $5, $6) AS a;

-- name: register_gateway
INSERT INTO gateways (id) VALUES ($1)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now();

-- name: heartbeat_gateway
INSERT INTO gateways (id) VALUES ($1)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now();

-- name: deregister_gateway
DELETE FROM gateways WHERE id = $1;

-- name: sweep_reservations
-- Release what gateways that stopped heartbeating for $1 seconds still hold, and anything
-- older than $2 seconds whoever holds it (a request never lasts that long).
-- A fine-tuning job's reservation (gateway_id 'fine-tuning', request_id = the job id; fine_tuning.sql)
-- lives as long as its job, which may wait and train for longer than $2: it is released here only once
-- the job ended $1 seconds ago and its trainer did not release it (the trainer died in between), and
-- it never counted in in_flight.
WITH swept AS (
    DELETE FROM reservations r
    WHERE (r.gateway_id <> 'fine-tuning'
           AND ((r.created_at < now() - make_interval(secs => $1)
                 AND NOT EXISTS (SELECT 1 FROM gateways g
                                 WHERE g.id = r.gateway_id AND g.heartbeat_at > now() - make_interval(secs => $1)))
                OR r.created_at < now() - make_interval(secs => $2)))
       OR (r.gateway_id = 'fine-tuning'
           AND NOT EXISTS (SELECT 1 FROM fine_tuning_jobs j
                           WHERE j.id = r.request_id
                             AND (j.status IN ('validating_files', 'queued', 'running', 'paused')
                                  OR j.finished_at > now() - make_interval(secs => $1))))
    RETURNING r.tenant_id, r.amount_micro_usd, r.gateway_id
), freed AS (
    SELECT tenant_id, sum(amount_micro_usd) AS amount, count(*) FILTER (WHERE gateway_id <> 'fine-tuning') AS requests
    FROM swept GROUP BY tenant_id
), released AS (
    UPDATE tenant_accounts a
    SET reserved_micro_usd = a.reserved_micro_usd - f.amount, in_flight = a.in_flight - f.requests, updated_at = now()
    FROM freed f WHERE a.tenant_id = f.tenant_id
    RETURNING f.requests
)
SELECT coalesce(sum(requests), 0)::bigint FROM released;

-- name: forget_dead_gateways
DELETE FROM gateways g WHERE g.heartbeat_at < now() - make_interval(secs => $1)
AND NOT EXISTS (SELECT 1 FROM reservations r WHERE r.gateway_id = g.id);

-- name: add_refusals
INSERT INTO refusals_daily AS r (tenant_id, bucket, refused_402, refused_429)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::bigint[]) ORDER BY 1, 2
ON CONFLICT (tenant_id, bucket) DO UPDATE
SET refused_402 = r.refused_402 + excluded.refused_402, refused_429 = r.refused_429 + excluded.refused_429;
