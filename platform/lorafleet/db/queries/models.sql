-- name: upsert_base_model
INSERT INTO base_models (id, name, max_model_len, architecture, max_lora_rank) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO UPDATE SET max_model_len = excluded.max_model_len, architecture = excluded.architecture,
                                 max_lora_rank = excluded.max_lora_rank
RETURNING id, name, max_model_len;

-- name: list_base_models
SELECT id, name, max_model_len, created_at FROM base_models ORDER BY name;

-- name: upsert_worker
INSERT INTO workers (url, base_model_id) VALUES ($1, $2)
ON CONFLICT (url) DO UPDATE SET base_model_id = excluded.base_model_id, heartbeat_at = now()
RETURNING url;

-- name: heartbeat_worker
UPDATE workers SET heartbeat_at = now() WHERE url = $1;

-- name: delete_worker
DELETE FROM workers WHERE url = $1;

-- name: list_live_workers
-- Workers that announced themselves recently; readiness is then polled directly.
SELECT w.url, w.base_model_id, m.name AS base_model_name
FROM workers w JOIN base_models m ON m.id = w.base_model_id
WHERE w.heartbeat_at > now() - make_interval(secs => $1);
