-- name: insert_response
INSERT INTO responses (id, tenant_id, api_key_id, previous_response_id, input, document, output, stored_bytes,
                       turn_bytes, chain_turns, chain_bytes, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now() + make_interval(days => $12));

-- name: get_response
-- The Response object as it was answered, as JSON text (served as it is: the gateway neither decodes nor
-- re-encodes it); its output is kept in a column of its own (a chain walk reads it alone).
SELECT (document || jsonb_build_object('output', output))::text FROM responses
WHERE id = $1 AND tenant_id = $2 AND expires_at > now();

-- name: response_input_page
-- One page of a stored response's input items, cut in the database like every other list: $3 the id of
-- the item the page starts after (NULL: from the first; an id not in the list: an empty page), $4 newest
-- first, $5 the page size plus one (the extra item says has_more). No row: no such response.
WITH stored AS (
    SELECT input FROM responses WHERE id = $1 AND tenant_id = $2 AND expires_at > now()
), items AS (
    SELECT e.item, CASE WHEN $4::boolean THEN -e.position ELSE e.position END AS rank
    FROM stored, jsonb_array_elements(stored.input) WITH ORDINALITY AS e(item, position)
), page AS (
    SELECT item, rank FROM items
    WHERE $3::text IS NULL OR rank > (SELECT min(rank) FROM items WHERE item ->> 'id' = $3::text)
    ORDER BY rank LIMIT $5
)
SELECT coalesce((SELECT jsonb_agg(item ORDER BY rank) FROM page), '[]'::jsonb) FROM stored;

-- name: delete_response
-- The row and its bytes in the tenant's storage, in one statement.
WITH gone AS (
    DELETE FROM responses WHERE id = $1 AND tenant_id = $2 AND expires_at > now() RETURNING id, stored_bytes
), freed AS (
    UPDATE tenant_storage s SET bytes = greatest(0, s.bytes - g.stored_bytes), objects = greatest(0, s.objects - 1),
                                updated_at = now()
    FROM gone g WHERE s.tenant_id = $2 AND s.kind = 'responses'
)
SELECT id FROM gone;

-- name: response_chain_head
-- The turn a new request continues, from its row alone (no stored JSON is read): whether it exists for
-- this tenant, and how long the conversation up to it is.
SELECT chain_turns, chain_bytes FROM responses WHERE id = $1 AND tenant_id = $2 AND expires_at > now();

-- name: response_chain
-- A conversation up to response $1, oldest turn first: each turn's input items, then its output — never
-- the request documents (tools, schemas, instructions), which no later turn renders.
-- Only the tenant's own, unexpired turns; the walk from the end stops after $3 turns or once the
-- turns read hold more than $4 bytes of JSON (so a long chain is refused, never loaded whole).
-- The oldest row's previous_response_id is not NULL when the walk stopped early or a turn is gone.
WITH RECURSIVE chain AS (
    SELECT id, previous_response_id, 1 AS depth, turn_bytes AS bytes
    FROM responses WHERE id = $1 AND tenant_id = $2 AND expires_at > now()
    UNION ALL
    SELECT r.id, r.previous_response_id, c.depth + 1, c.bytes + r.turn_bytes
    FROM responses r JOIN chain c ON r.id = c.previous_response_id
    WHERE r.tenant_id = $2 AND r.expires_at > now() AND c.depth < $3 AND c.bytes <= $4
), bounded AS (
    -- The whole walk is known before any JSON is read: a chain over the bounds loads none of it.
    SELECT c.*, (SELECT max(bytes) FROM chain) AS total_bytes FROM chain c
)
SELECT b.previous_response_id, b.depth, b.bytes,
       CASE WHEN b.total_bytes <= $4 THEN r.input END AS input,
       CASE WHEN b.total_bytes <= $4 THEN r.output END AS output
FROM bounded b JOIN responses r ON r.id = b.id
ORDER BY b.depth DESC;

-- name: forget_expired_responses
-- Expired rows, and their bytes in each tenant's storage.
WITH gone AS (
    DELETE FROM responses WHERE expires_at <= now() RETURNING tenant_id, stored_bytes
), per_tenant AS (
    SELECT tenant_id, sum(stored_bytes)::bigint AS bytes, count(*)::bigint AS objects FROM gone GROUP BY tenant_id
)
UPDATE tenant_storage s SET bytes = greatest(0, s.bytes - p.bytes), objects = greatest(0, s.objects - p.objects),
                            updated_at = now()
FROM per_tenant p WHERE s.tenant_id = p.tenant_id AND s.kind = 'responses';
