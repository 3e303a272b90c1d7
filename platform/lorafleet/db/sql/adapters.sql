-- name: insert_blob
INSERT INTO blobs (sha256, size_bytes) VALUES ($1, $2) ON CONFLICT (sha256) DO NOTHING;

-- name: insert_adapter
-- The next version of its name: one above any the name ever had, deleted ones included (a version is never
-- reused); the caller holds the tenant's adapter lock (lock_tenant_adapters), so two uploads cannot take one number.
INSERT INTO adapters (id, tenant_id, name, base_model_id, rank, lora_alpha, target_modules, config, sha256, size_bytes, status,
                      version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'ready',
        (SELECT coalesce(max(version), 0) + 1 FROM adapters WHERE tenant_id = $2 AND name = $3))
RETURNING id, lora_int_id, tenant_id, name, base_model_id, rank, lora_alpha, target_modules, sha256, size_bytes, status,
          created_at, version;

-- name: list_adapters
SELECT a.id, a.name, a.version, m.name AS base_model, a.rank, a.target_modules, a.size_bytes, a.sha256, a.status,
       a.created_at, a.fine_tuned_model
FROM adapters a JOIN base_models m ON m.id = a.base_model_id
WHERE a.tenant_id = $1 AND a.status <> 'deleted' AND ($2::text IS NULL OR a.id > $2)
ORDER BY a.id LIMIT $3;

-- name: get_adapter
SELECT a.id, a.name, a.version, m.name AS base_model, a.rank, a.target_modules, a.size_bytes, a.sha256, a.status,
       a.created_at, a.fine_tuned_model
FROM adapters a JOIN base_models m ON m.id = a.base_model_id
WHERE a.id = $1 AND a.tenant_id = $2 AND a.status <> 'deleted';

-- name: resolve_adapter_by_name
-- What the gateway needs to route a request naming an adapter; only the caller's own, ready ones: the
-- latest version of the name.
SELECT a.id, a.base_model_id, m.name AS base_model, a.version
FROM adapters a JOIN base_models m ON m.id = a.base_model_id
WHERE a.tenant_id = $1 AND a.name = $2 AND a.status = 'ready'
ORDER BY a.version DESC LIMIT 1;

-- name: resolve_adapter_version
-- `name@v<n>`: exactly that version of the caller's name, if it is ready.
SELECT a.id, a.base_model_id, m.name AS base_model, a.version
FROM adapters a JOIN base_models m ON m.id = a.base_model_id
WHERE a.tenant_id = $1 AND a.name = $2 AND a.version = $3 AND a.status = 'ready';

-- name: resolve_adapter_alias
-- `name@alias`: the alias's targets that are still ready, each with its weight, by version.
SELECT a.id, m.name AS base_model, a.version, (t.target ->> 'weight')::integer AS weight
FROM adapter_aliases al
CROSS JOIN LATERAL jsonb_array_elements(al.targets) AS t (target)
JOIN adapters a ON a.id = t.target ->> 'adapter_id' AND a.tenant_id = al.tenant_id AND a.status = 'ready'
JOIN base_models m ON m.id = a.base_model_id
WHERE al.tenant_id = $1 AND al.name = $2 AND al.alias = $3
ORDER BY a.version;

-- name: adapter_versions
-- Every live version of one of the tenant's names, oldest first (what an alias may point at).
SELECT a.id, a.version, m.name AS base_model
FROM adapters a JOIN base_models m ON m.id = a.base_model_id
WHERE a.tenant_id = $1 AND a.name = $2 AND a.status = 'ready' ORDER BY a.version;

-- name: list_adapter_aliases
SELECT name, alias, targets, updated_at FROM adapter_aliases WHERE tenant_id = $1 AND name = $2 ORDER BY alias;

-- name: list_tenant_aliases
SELECT name, alias, targets, updated_at FROM adapter_aliases WHERE tenant_id = $1 ORDER BY name, alias;

-- name: get_adapter_alias
SELECT name, alias, targets, updated_at FROM adapter_aliases WHERE tenant_id = $1 AND name = $2 AND alias = $3;

-- name: upsert_adapter_alias
-- Moving an alias is this one statement: a request resolves it before or after, never half-way.
INSERT INTO adapter_aliases (tenant_id, name, alias, targets) VALUES ($1, $2, $3, $4)
ON CONFLICT (tenant_id, name, alias) DO UPDATE SET targets = excluded.targets, updated_at = now()
RETURNING name, alias, targets, updated_at;

-- name: delete_adapter_alias
DELETE FROM adapter_aliases WHERE tenant_id = $1 AND name = $2 AND alias = $3
RETURNING name, alias, targets, updated_at;

-- name: lock_adapter_alias
-- Serialises the moves of one alias (set, rollback, delete) so its history is in the order they happened.
SELECT pg_advisory_xact_lock(hashtextextended('lorafleet.alias|' || $1 || '|' || $2 || '|' || $3, 0));

-- name: insert_alias_history
INSERT INTO adapter_alias_history (tenant_id, name, alias, targets, action, key_id) VALUES ($1, $2, $3, $4, $5, $6);

-- name: alias_history
-- The alias's moves, newest first.
SELECT targets, action, key_id, created_at FROM adapter_alias_history
WHERE tenant_id = $1 AND name = $2 AND alias = $3 ORDER BY id DESC LIMIT $4;

-- name: aliases_targeting
-- The aliases that send traffic to this adapter version (it may not be deleted while they do).
SELECT name, alias FROM adapter_aliases
WHERE tenant_id = $1 AND targets @> jsonb_build_array(jsonb_build_object('adapter_id', $2::text)) ORDER BY alias;

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

-- name: resolve_fine_tuned_target
-- A request naming ft:<base>:<suffix>:<job>: the tenant's ready adapter with that public name, and its version.
SELECT a.id, m.name AS base_model, a.version
FROM adapters a JOIN base_models m ON m.id = a.base_model_id
WHERE a.tenant_id = $1 AND a.fine_tuned_model = $2 AND a.status = 'ready';

-- name: adapter_export
-- What the owner's download packs: the caller's ready adapter version, its stored config and blob.
SELECT a.id, a.name, a.version, m.name AS base_model, a.config, a.sha256, a.size_bytes, a.created_at
FROM adapters a JOIN base_models m ON m.id = a.base_model_id
WHERE a.id = $1 AND a.tenant_id = $2 AND a.status = 'ready';

-- name: checkpoint_adapter
-- A fine-tuning checkpoint of the caller's job ($1 tenant, $2 job, $3 checkpoint): the adapter it was served as.
SELECT a.id FROM fine_tuning_checkpoints c
JOIN fine_tuning_jobs j ON j.id = c.job_id
JOIN adapters a ON a.tenant_id = j.tenant_id AND a.fine_tuned_model = c.fine_tuned_model_checkpoint AND a.status = 'ready'
WHERE j.tenant_id = $1 AND c.job_id = $2 AND c.id = $3;

-- name: adapter_version_stats
-- Per adapter version, from the ledger since $3: requests, failures (the platform's: upstream errors and
-- unavailable; client disconnects apart), tokens, time to first token. $1 tenant (NULL: all), $2 name (NULL: all).
SELECT a.id AS adapter_id, a.tenant_id, a.name, a.version, a.status,
       count(l.request_id)::bigint AS requests,
       count(l.request_id) FILTER (WHERE l.outcome IN ('upstream_error', 'unavailable'))::bigint AS errors,
       count(l.request_id) FILTER (WHERE l.outcome = 'client_disconnect')::bigint AS client_disconnects,
       coalesce(sum(l.prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(l.completion_tokens), 0)::bigint AS completion_tokens,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY l.ttft_ms) AS ttft_ms_p50,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY l.ttft_ms) AS ttft_ms_p95
FROM adapters a
LEFT JOIN usage_ledger l ON l.adapter_id = a.id AND l.started_at >= $3
WHERE ($1::text IS NULL OR a.tenant_id = $1) AND ($2::text IS NULL OR a.name = $2)
  AND (a.status = 'ready' OR l.request_id IS NOT NULL)
GROUP BY a.id
ORDER BY a.tenant_id, a.name, a.version
LIMIT $4;
