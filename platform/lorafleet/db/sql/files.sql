-- name: insert_file
INSERT INTO files (id, tenant_id, purpose, filename, bytes, blob_key, status, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, 'processed', $7)
RETURNING id, purpose, filename, bytes, status, created_at, expires_at;

-- name: list_files
-- The tenant's files, oldest id first after the cursor ($3), optionally of one purpose ($2).
SELECT id, purpose, filename, bytes, status, created_at, expires_at FROM files
WHERE tenant_id = $1 AND status <> 'deleted' AND ($2::text IS NULL OR purpose = $2)
  AND ($3::text IS NULL OR id > $3) AND (expires_at IS NULL OR expires_at > now())
ORDER BY id LIMIT $4;

-- name: get_file
-- $3: also a file past its expiry the janitor has not deleted yet (a job that took it before it expired).
SELECT id, purpose, filename, bytes, status, created_at, expires_at, blob_key FROM files
WHERE id = $1 AND tenant_id = $2 AND status <> 'deleted' AND ($3 OR expires_at IS NULL OR expires_at > now());

-- name: delete_file
UPDATE files SET status = 'deleted', deleted_at = now()
WHERE id = $1 AND tenant_id = $2 AND status <> 'deleted'
RETURNING id, blob_key, bytes;


-- name: expire_files
-- Up to $1 files past their expires_at, deleted (as DELETE /v1/files does), oldest expiry first; not a
-- file an open fine-tuning job or a batch being validated still reads (it would fail the job or the
-- batch: the file goes once they are done with it; a validated batch keeps its lines itself).
-- SKIP LOCKED: gateways sweeping at once take different files.
UPDATE files f SET status = 'deleted', deleted_at = now()
WHERE f.id IN (SELECT id FROM files x
               WHERE x.status <> 'deleted' AND x.expires_at <= now()
                 AND NOT EXISTS (SELECT 1 FROM fine_tuning_jobs j
                                 WHERE j.tenant_id = x.tenant_id AND x.id IN (j.training_file, j.validation_file)
                                   AND j.status IN ('validating_files', 'queued', 'running', 'paused'))
                 AND NOT EXISTS (SELECT 1 FROM batches b
                                 WHERE b.tenant_id = x.tenant_id AND b.input_file_id = x.id AND b.status = 'validating')
               ORDER BY x.expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING f.id, f.tenant_id, f.blob_key, f.bytes;
