-- name: insert_project
INSERT INTO projects (id, tenant_id, name) VALUES ($1, $2, $3) RETURNING *;

-- name: get_project
SELECT * FROM projects WHERE id = $1 AND tenant_id = $2;

-- name: list_projects
-- Oldest first (the default project first of all); $2 the last id of the previous page, $3 archived too.
SELECT * FROM projects
 WHERE tenant_id = $1 AND ($3 OR archived_at IS NULL)
   AND ($2::text IS NULL OR (created_at, id) > (SELECT created_at, id FROM projects WHERE id = $2 AND tenant_id = $1))
 ORDER BY created_at, id LIMIT $4;

-- name: rename_project
UPDATE projects SET name = $3 WHERE id = $1 AND tenant_id = $2 AND archived_at IS NULL RETURNING *;

-- name: archive_project
-- The default project is never archived (it owns what has no other project); archiving twice is a no-op.
UPDATE projects SET archived_at = COALESCE(archived_at, now())
 WHERE id = $1 AND tenant_id = $2 AND NOT is_default
RETURNING *;

-- name: count_projects
SELECT count(*) FROM projects WHERE tenant_id = $1 AND archived_at IS NULL;
