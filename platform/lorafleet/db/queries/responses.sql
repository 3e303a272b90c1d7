-- name: insert_response
INSERT INTO responses (id, tenant_id, api_key_id, previous_response_id, input, document, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(days => $7));

-- name: get_response
SELECT document FROM responses WHERE id = $1 AND tenant_id = $2 AND expires_at > now();

-- name: get_response_input
SELECT input FROM responses WHERE id = $1 AND tenant_id = $2 AND expires_at > now();

-- name: delete_response
DELETE FROM responses WHERE id = $1 AND tenant_id = $2 AND expires_at > now() RETURNING id;

-- name: response_chain
-- A conversation up to response $1, oldest turn first: each turn's input items, then its output.
-- Only the tenant's own, unexpired turns; the walk from the end stops after $3 turns or once the
-- turns read hold more than $4 bytes of JSON (so a long chain is refused, never loaded whole).
-- The oldest row's previous_response_id is not NULL when the walk stopped early or a turn is gone.
WITH RECURSIVE chain AS (
    SELECT id, previous_response_id, input, document -> 'output' AS output, 1 AS depth,
           octet_length(input::text) + octet_length((document -> 'output')::text) AS bytes
    FROM responses WHERE id = $1 AND tenant_id = $2 AND expires_at > now()
    UNION ALL
    SELECT r.id, r.previous_response_id, r.input, r.document -> 'output', c.depth + 1,
           c.bytes + octet_length(r.input::text) + octet_length((r.document -> 'output')::text)
    FROM responses r JOIN chain c ON r.id = c.previous_response_id
    WHERE r.tenant_id = $2 AND r.expires_at > now() AND c.depth < $3 AND c.bytes <= $4
)
SELECT input, output, previous_response_id, depth, bytes FROM chain ORDER BY depth DESC;

-- name: forget_expired_responses
DELETE FROM responses WHERE expires_at <= now();
