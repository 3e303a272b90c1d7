-- name: insert_audit_event
-- $2 tenant: the caller's; for the operator, the tenant its path names (directly, or through a key or adapter).
INSERT INTO audit_log (id, tenant_id, type, actor_kind, actor_id, actor_key_id, resource_id, details, ip_address,
                       user_agent, request_id, status)
VALUES ($1, COALESCE($2, (SELECT tenant_id FROM api_keys WHERE id = $13),
                         (SELECT tenant_id FROM adapters WHERE id = $14)),
        $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING tenant_id;

-- name: list_audit_events
-- A page, newest first (with before: oldest first, the caller turns it round). $1 tenant (NULL: every tenant, for the operator); $2/$3 the after/before cursor ids;
-- $4 types, $5 actor ids, $6 resource ids (NULL: any); $7/$8 effective_at bounds (inclusive, NULL: open);
-- $9 rows to fetch.
SELECT seq, id, tenant_id, type, effective_at, actor_kind, actor_id, actor_key_id, resource_id, details,
       ip_address, user_agent, request_id, status
  FROM audit_log
 WHERE ($1::text IS NULL OR tenant_id = $1)
   AND ($2::text IS NULL OR seq < (SELECT seq FROM audit_log WHERE id = $2 AND ($1::text IS NULL OR tenant_id = $1)))
   AND ($3::text IS NULL OR seq > (SELECT seq FROM audit_log WHERE id = $3 AND ($1::text IS NULL OR tenant_id = $1)))
   AND ($4::text[] IS NULL OR type = ANY($4))
   AND ($5::text[] IS NULL OR actor_id = ANY($5) OR actor_key_id = ANY($5))
   AND ($6::text[] IS NULL OR resource_id = ANY($6))
   AND ($7::timestamptz IS NULL OR effective_at >= $7)
   AND ($8::timestamptz IS NULL OR effective_at <= $8)
 ORDER BY CASE WHEN $3::text IS NULL THEN -seq ELSE seq END  -- before: the page just newer than it
 LIMIT $9;

-- name: audit_event_exists
SELECT EXISTS (SELECT 1 FROM audit_log WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2));
