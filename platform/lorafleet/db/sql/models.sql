-- name: upsert_base_model
INSERT INTO base_models (id, name, max_model_len, architecture, max_lora_rank, task) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (name) DO UPDATE SET max_model_len = excluded.max_model_len, architecture = excluded.architecture,
                                 max_lora_rank = excluded.max_lora_rank, task = excluded.task
RETURNING id, name, max_model_len;

-- name: list_base_models
-- With what the workers' config.json said of the vocabulary and the hidden size (NULL when not said).
SELECT id, name, max_model_len, task, created_at, (architecture ->> 'vocab_size')::int AS vocab_size,
       (architecture ->> 'hidden_size')::int AS hidden_size
FROM base_models ORDER BY name;

-- name: upsert_worker
-- Register a worker, or change its state ($3); gateways hear of it at once (NOTIFY).
WITH upserted AS (
    INSERT INTO workers (url, base_model_id, state) VALUES ($1, $2, $3)
    ON CONFLICT (url) DO UPDATE SET base_model_id = excluded.base_model_id, state = excluded.state,
                                    heartbeat_at = now()
    RETURNING url
)
SELECT url, pg_notify('lorafleet_workers', url) FROM upserted;

-- name: heartbeat_worker
-- Still alive, state unchanged (no NOTIFY: gateways re-read the table on their own clock).
UPDATE workers SET heartbeat_at = now() WHERE url = $1 RETURNING url;

-- name: delete_worker
WITH deleted AS (DELETE FROM workers WHERE url = $1 RETURNING url)
SELECT pg_notify('lorafleet_workers', url) FROM deleted;

-- name: list_live_workers
-- Workers that announced themselves recently; readiness is then polled directly.
SELECT w.url, w.base_model_id, m.name AS base_model_name, w.state
FROM workers w JOIN base_models m ON m.id = w.base_model_id
WHERE w.heartbeat_at > now() - make_interval(secs => $1);

-- name: request_wake
-- A gateway holds a request for this base model ($1): wake its sleeping workers.
WITH woken AS (
    UPDATE workers SET wake_requested_at = now() WHERE base_model_id = $1 AND state = 'asleep' RETURNING url
)
SELECT count(*)::int AS asleep, pg_notify('lorafleet_wake', $1) FROM woken;

-- name: wake_requested
-- Whether a gateway asked this worker to wake since it fell asleep at $2.
SELECT wake_requested_at > $2 FROM workers WHERE url = $1;

-- name: set_gateway_held
UPDATE gateways SET held = $2 WHERE id = $1;

-- name: fleet_held
-- Requests held waiting for a worker, per base model, over every live gateway.
SELECT h.key AS base_model_id, sum(h.value::int)::int AS held
FROM gateways g, jsonb_each_text(g.held) h
WHERE g.heartbeat_at > now() - make_interval(secs => $1)
GROUP BY h.key;
