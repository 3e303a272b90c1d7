-- name: insert_blob
INSERT INTO blobs (sha256, size_bytes) VALUES ($1, $2) ON CONFLICT (sha256) DO NOTHING;

-- name: insert_adapter
INSERT INTO adapters (id, tenant_id, name, base_model_id, rank, lora_alpha, target_modules, config, sha256, size_bytes, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'ready')
RETURNING id, lora_int_id, tenant_id, name, base_model_id, rank, lora_alpha, target_modules, sha256, size_bytes, status, created_at;

-- name: list_adapters
SELECT a.id, a.name, m.name AS base_model, a.rank, a.target_modules, a.size_bytes, a.sha256, a.status, a.created_at,
       a.fine_tuned_model
FROM adapters a JOIN base_models m ON m.id = a.base_model_id
WHERE a.tenant_id = $1 AND a.status <> 'deleted' AND ($2::text IS NULL OR a.id > $2)
ORDER BY a.id LIMIT $3;

-- name: get_adapter
SELECT a.id, a.name, m.name AS base_model, a.rank, a.target_modules, a.size_bytes, a.sha256, a.status, a.created_at,
       a.fine_tuned_model
FROM adapters a JOIN base_models m ON m.id = a.base_model_id
WHERE a.id = $1 AND a.tenant_id = $2 AND a.status <> 'deleted';

-- name: resolve_adapter_by_name
-- What the gateway needs to route a request naming an adapter; only the caller's own, ready ones.
SELECT a.id, a.base_model_id, m.name AS base_model
FROM adapters a JOIN base_models m ON m.id = a.base_model_id
WHERE a.tenant_id = $1 AND a.name = $2 AND a.status = 'ready';

-- name: delete_adapter
UPDATE adapters SET status = 'deleted', deleted_at = now()
WHERE id = $1 AND tenant_id = $2 AND status <> 'deleted'
RETURNING id, sha256;

-- name: unreferenced_blob
-- The blob may go once no adapter that still exists points at it; the row lock orders concurrent deletes and uploads.
DELETE FROM blobs b WHERE b.sha256 = $1
AND NOT EXISTS (SELECT 1 FROM adapters a WHERE a.sha256 = b.sha256 AND a.status <> 'deleted')
RETURNING sha256;

-- name: adapter_for_worker
-- The worker's resolver: by id, ready only, with what LoRARequest and the files need.
SELECT a.id, a.lora_int_id, a.config, a.sha256, m.name AS base_model
FROM adapters a JOIN base_models m ON m.id = a.base_model_id
WHERE a.id = $1 AND a.status = 'ready';

-- name: list_base_model_specs
-- Everything an upload is checked against: each served base model's shape and largest rank.
SELECT id, name, architecture, max_lora_rank FROM base_models ORDER BY name;

-- name: blob_exists
SELECT 1 FROM blobs WHERE sha256 = $1;

-- name: lock_tenant_adapters
-- Serialises one tenant's uploads for the quota check (transaction-scoped).
SELECT pg_advisory_xact_lock(hashtextextended('lorafleet.adapters|' || $1, 0));

-- name: tenant_adapter_usage
SELECT count(*)::bigint AS adapters, coalesce(sum(size_bytes), 0)::bigint AS bytes
FROM adapters WHERE tenant_id = $1 AND status <> 'deleted';

-- name: set_adapter_pinned
UPDATE adapters a SET pinned = $2 FROM base_models m
WHERE a.id = $1 AND a.status = 'ready' AND m.id = a.base_model_id
RETURNING a.id, a.name, m.name AS base_model, a.pinned;

-- name: pinned_adapters
-- What a worker of this base model ($1, its name) keeps pinned.
SELECT a.id FROM adapters a JOIN base_models m ON m.id = a.base_model_id
WHERE m.name = $1 AND a.pinned AND a.status = 'ready' ORDER BY a.id;
