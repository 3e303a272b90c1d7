-- name: tenant_storage_usage
-- What a tenant keeps of one kind ($2: responses, files): bytes and objects (no row: nothing yet).
SELECT bytes, objects FROM tenant_storage WHERE tenant_id = $1 AND kind = $2;

-- name: charge_tenant_storage
-- Take $3 bytes and one object of kind $2 for tenant $1, only while the tenant stays within $4 bytes
-- and $5 objects; a row back means it fits (run in the transaction that stores the object).
INSERT INTO tenant_storage AS s (tenant_id, kind, bytes, objects)
SELECT $1::text, $2::text, $3::bigint, 1 WHERE $3::bigint <= $4::bigint AND 1 <= $5::bigint
ON CONFLICT (tenant_id, kind) DO UPDATE
SET bytes = s.bytes + excluded.bytes, objects = s.objects + 1, updated_at = now()
WHERE s.bytes + excluded.bytes <= $4::bigint AND s.objects + 1 <= $5::bigint
RETURNING bytes, objects;

-- name: refund_tenant_storage
-- Give back $3 bytes and $4 objects of kind $2 (run in the transaction that deletes them).
UPDATE tenant_storage SET bytes = greatest(0, bytes - $3), objects = greatest(0, objects - $4), updated_at = now()
WHERE tenant_id = $1 AND kind = $2;

-- name: reserve_tenant_storage
-- Hold $3 bytes and $4 objects of kind $2 for tenant $1 — room something will take later (a batch's output
-- files) — only while the tenant stays within $5 bytes and $6 objects; a row back means it fits.
INSERT INTO tenant_storage AS s (tenant_id, kind, bytes, objects)
SELECT $1::text, $2::text, $3::bigint, $4::bigint WHERE $3::bigint <= $5::bigint AND $4::bigint <= $6::bigint
ON CONFLICT (tenant_id, kind) DO UPDATE
SET bytes = s.bytes + excluded.bytes, objects = s.objects + excluded.objects, updated_at = now()
WHERE s.bytes + excluded.bytes <= $5::bigint AND s.objects + excluded.objects <= $6::bigint
RETURNING bytes, objects;
