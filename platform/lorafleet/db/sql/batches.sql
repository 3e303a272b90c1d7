-- name: insert_batch
-- $10: seconds before its lines may be dispatched (the minimum deferral); $11: the room its output may take,
-- held in the tenant's file quota by the same transaction.
INSERT INTO batches (id, tenant_id, api_key_id, endpoint, input_file_id, completion_window, metadata, expires_at,
                     output_expires_seconds, run_after, output_reserved_bytes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10), $11)
RETURNING *, 0::bigint AS input_tokens, 0::bigint AS cached_tokens, 0::bigint AS output_tokens;

-- name: tenant_batches
-- The tenant's batches, newest first, each with its usage summed from the ledger (the one record of what
-- ran): one batch ($2), or a page of them ($3: the id of the last one of the previous page; $4 rows).
SELECT b.*, u.input_tokens, u.cached_tokens, u.output_tokens
FROM batches b
CROSS JOIN LATERAL (
    SELECT coalesce(sum(l.prompt_tokens), 0)::bigint AS input_tokens,
           coalesce(sum(l.cached_prompt_tokens), 0)::bigint AS cached_tokens,
           coalesce(sum(l.completion_tokens), 0)::bigint AS output_tokens
    FROM usage_ledger l WHERE l.batch_id = b.id AND l.tenant_id = b.tenant_id
) u
WHERE b.tenant_id = $1 AND ($2::text IS NULL OR b.id = $2)
  AND ($3::text IS NULL OR (b.created_at, b.id) < (SELECT created_at, id FROM batches WHERE id = $3 AND tenant_id = $1))
ORDER BY b.created_at DESC, b.id DESC LIMIT $4;

-- name: lock_tenant_batches
-- Creates of one tenant's batches one at a time: its limits are checked and taken together.
SELECT pg_advisory_xact_lock(hashtextextended('lorafleet batches ' || $1, 0));

-- name: open_batches_of_tenant
-- The tenant's batches not finished, and the bytes of their input files (their lines live in the
-- database until the batch ends).
SELECT count(*) AS batches, coalesce(sum(f.bytes), 0)::bigint AS bytes
FROM batches b LEFT JOIN files f ON f.id = b.input_file_id
WHERE b.tenant_id = $1 AND b.status IN ('validating', 'in_progress', 'finalizing', 'cancelling');

-- name: cancel_batch
-- No new lines start; running ones finish; the finalizer then ends it `cancelled` with what ran. Not a
-- batch past its window or one a finalizer holds: that one is already ending as it says.
UPDATE batches SET status = 'cancelling', cancelling_at = now(), ending = 'cancelled'
WHERE id = $1 AND tenant_id = $2 AND expires_at > now()
  AND (status = 'validating' OR status = 'in_progress' AND claimed_by IS NULL)
RETURNING id;

-- name: claim_batch_validation
-- A batch to validate: one not leased, or whose gateway's lease ran out (it died validating).
UPDATE batches SET claimed_by = $1, lease_until = now() + make_interval(secs => $2),
    validation_attempts = validation_attempts + 1
WHERE id = (SELECT id FROM batches
            WHERE status = 'validating' AND expires_at > now() AND (lease_until IS NULL OR lease_until < now())
            ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id, tenant_id, api_key_id, endpoint, input_file_id, validation_attempts, output_reserved_bytes;

-- name: batch_validated
-- Its lines are in: it runs (cancelled meanwhile: the finalizer ends it, every line unrun). $4: its output's
-- room, now from its lines' own bounds (the transaction adjusts the tenant's quota by the difference). $5: the
-- model every line names (NULL when they name several).
UPDATE batches SET status = CASE WHEN status = 'validating' THEN 'in_progress' ELSE status END,
    in_progress_at = CASE WHEN status = 'validating' THEN now() END, total = $3, claimed_by = NULL, lease_until = NULL,
    output_reserved_bytes = $4, model = $5
WHERE id = $1 AND claimed_by = $2 AND status IN ('validating', 'cancelling')
RETURNING id;

-- name: batch_refused
-- Refused: the room held for its output, returned for the same transaction to give back.
UPDATE batches b SET status = 'failed', failed_at = now(), errors = $3, claimed_by = NULL, lease_until = NULL,
    output_reserved_bytes = 0
FROM (SELECT id, output_reserved_bytes FROM batches WHERE id = $1 FOR UPDATE) held
WHERE b.id = held.id AND b.claimed_by = $2 AND b.status IN ('validating', 'cancelling')
RETURNING b.tenant_id, held.output_reserved_bytes AS released_bytes;

-- name: batch_models_open
-- Base models with lines ready to run (their batch's deferral over).
SELECT DISTINCT l.base_model_id
FROM batches b JOIN batch_lines l ON l.batch_id = b.id
WHERE b.status = 'in_progress' AND b.expires_at > now() AND b.run_after <= now() AND l.state <> 'done'
  AND (l.state = 'pending' AND (l.not_before IS NULL OR l.not_before <= now()) OR l.lease_until < now());

-- name: claim_batch_lines
-- Up to $3 lines of base model $2 for gateway $1, pending ones and running ones whose dispatcher's lease
-- ran out (it died). Fair: among the batches with lines of this model ready, each tenant's oldest first,
-- and within those, line by line in turn — so neither a tenant with many batches nor a batch with many
-- lines holds back the others. SKIP LOCKED: concurrent dispatchers never take the same line. No line of a
-- batch still within its deferral (run_after).
WITH ready AS (
    SELECT b.id, b.created_at, row_number() OVER (PARTITION BY b.tenant_id ORDER BY b.created_at, b.id) AS tenant_turn
    FROM batches b
    WHERE b.status = 'in_progress' AND b.expires_at > now() AND b.run_after <= now()
      AND EXISTS (SELECT 1 FROM batch_lines l
                  WHERE l.base_model_id = $2 AND l.batch_id = b.id AND l.state <> 'done'
                    AND (l.state = 'pending' AND (l.not_before IS NULL OR l.not_before <= now())
                         OR l.lease_until < now()))
), chosen AS (
    SELECT id, created_at, tenant_turn FROM ready ORDER BY tenant_turn, created_at LIMIT 64
), candidates AS (
    SELECT x.batch_id, x.line, row_number() OVER (PARTITION BY x.batch_id ORDER BY x.line) AS turn,
           c.tenant_turn, c.created_at
    FROM chosen c CROSS JOIN LATERAL (
        SELECT l.batch_id, l.line FROM batch_lines l
        WHERE l.base_model_id = $2 AND l.batch_id = c.id AND l.state <> 'done'
          AND (l.state = 'pending' AND (l.not_before IS NULL OR l.not_before <= now()) OR l.lease_until < now())
        ORDER BY l.line LIMIT $3 FOR UPDATE SKIP LOCKED
    ) x
), picked AS (
    SELECT batch_id, line FROM candidates ORDER BY tenant_turn, turn, created_at, batch_id LIMIT $3
)
UPDATE batch_lines l SET state = 'running', claimed_by = $1, lease_until = now() + make_interval(secs => $4),
    attempts = l.attempts + 1, not_before = NULL
FROM picked p, batches b
WHERE l.batch_id = p.batch_id AND l.line = p.line AND b.id = l.batch_id
RETURNING l.batch_id, l.line, l.custom_id, l.body, l.attempts, l.request_id, l.answer_bound, b.tenant_id, b.api_key_id,
          b.endpoint;

-- name: renew_batch_lines
-- The lines this gateway still runs keep their lease.
UPDATE batch_lines SET lease_until = now() + make_interval(secs => $4)
FROM unnest($2::text[], $3::int[]) AS t(batch_id, line)
WHERE batch_lines.batch_id = t.batch_id AND batch_lines.line = t.line AND claimed_by = $1 AND state = 'running';

-- name: finish_batch_line
-- A line's answer, once: only by the dispatcher that holds it, and counted on its batch. The answer's body
-- is in the row ($6) or, when large, in the blob store under the key $9 (gateway/batches/spool.py).
WITH done AS (
    UPDATE batch_lines SET state = 'done', status_code = $5, response = $6, error_code = $7, error_message = $8,
        answer_blob = $9, finished_at = now(), lease_until = NULL
    WHERE batch_id = $1 AND line = $2 AND claimed_by = $3 AND attempts = $4 AND state = 'running'
      AND EXISTS (SELECT 1 FROM batches WHERE id = $1 AND status IN ('in_progress', 'cancelling', 'finalizing'))
    RETURNING batch_id
)
UPDATE batches b SET completed = b.completed + (CASE WHEN $5::int BETWEEN 200 AND 299 THEN 1 ELSE 0 END),
                     failed = b.failed + (CASE WHEN $5::int BETWEEN 200 AND 299 THEN 0 ELSE 1 END)
FROM done WHERE b.id = done.batch_id
RETURNING b.id;

-- name: release_batch_line
-- A line back in the queue, not before $5 seconds: one that did not run (rate limited, no worker woke
-- in time) under a new request id $6 (the try's own row says nothing ran); one cut by a shutdown under
-- its own ($6 NULL: billed once). The try does not count.
UPDATE batch_lines SET state = 'pending', claimed_by = NULL, lease_until = NULL, attempts = attempts - 1,
    not_before = now() + make_interval(secs => $5), request_id = coalesce($6, request_id)
WHERE batch_id = $1 AND line = $2 AND claimed_by = $3 AND attempts = $4 AND state = 'running';

-- name: claim_batch_ending
-- A batch with nothing left to run (or none that may run: expired, cancelling), none running, not
-- leased by a live finalizer: this gateway writes its output and error files and ends it.
UPDATE batches b SET
    claimed_by = $1, lease_until = now() + make_interval(secs => $2),
    ending = coalesce(b.ending, CASE WHEN b.expires_at <= now() THEN 'expired' ELSE 'completed' END),
    status = CASE WHEN b.status = 'in_progress' AND b.expires_at > now() THEN 'finalizing' ELSE b.status END,
    finalizing_at = CASE WHEN b.status = 'in_progress' AND b.expires_at > now() THEN now() ELSE b.finalizing_at END
WHERE b.id = (
    SELECT c.id FROM batches c
    WHERE (c.status IN ('in_progress', 'finalizing', 'cancelling') OR c.status = 'validating' AND c.expires_at <= now())
      AND (c.lease_until IS NULL OR c.lease_until < now())
      AND NOT EXISTS (SELECT 1 FROM batch_lines l WHERE l.batch_id = c.id AND l.state = 'running'
                      AND l.lease_until >= now())
      AND (c.status <> 'in_progress' OR c.expires_at <= now()
           OR NOT EXISTS (SELECT 1 FROM batch_lines l WHERE l.batch_id = c.id AND l.state <> 'done'))
    ORDER BY c.created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING b.id, b.tenant_id, b.ending, b.status, b.output_expires_seconds;

-- name: batch_lines_in_order
-- Every line of a batch, for its output and error files ($2: lines after this one; $3 per page).
SELECT line, custom_id, state, request_id, status_code, response, answer_blob, error_code, error_message
FROM batch_lines WHERE batch_id = $1 AND line > $2 ORDER BY line LIMIT $3;

-- name: end_batch
-- The files are written: the batch ends as its finalizer claimed it ($7), its counts final; the room held
-- for its output is returned for the same transaction to give back (its files take their own room).
UPDATE batches b SET
    status = $7, ending = $7,
    output_file_id = $3, error_file_id = $4, completed = $5, failed = $6,
    completed_at = CASE WHEN $7 = 'completed' THEN now() END,
    expired_at = CASE WHEN $7 = 'expired' THEN now() END,
    cancelled_at = CASE WHEN $7 = 'cancelled' THEN now() END,
    claimed_by = NULL, lease_until = NULL, output_reserved_bytes = 0
FROM (SELECT id, output_reserved_bytes FROM batches WHERE id = $1 FOR UPDATE) held
WHERE b.id = held.id AND b.claimed_by = $2 AND b.status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
RETURNING held.output_reserved_bytes AS released_bytes;

-- name: forget_batch_lines
-- An ended batch's lines: its files hold every answer now, and prompts are kept no longer than that.
DELETE FROM batch_lines WHERE batch_id = $1;
