-- name: lock_tenant_fine_tuning
-- Serialises one tenant's job creations for the concurrency cap (transaction-scoped).
SELECT pg_advisory_xact_lock(hashtextextended('lorafleet.fine_tuning|' || $1, 0));

-- name: count_open_fine_tuning_jobs
SELECT count(*)::int FROM fine_tuning_jobs
WHERE tenant_id = $1 AND status IN ('validating_files', 'queued', 'running', 'paused');

-- name: insert_fine_tuning_job
INSERT INTO fine_tuning_jobs (id, tenant_id, api_key_id, base_model_id, model, training_file, validation_file,
                              suffix, seed, metadata, hyperparameters, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'validating_files')
RETURNING *;

-- name: get_fine_tuning_job
SELECT * FROM fine_tuning_jobs WHERE id = $1 AND tenant_id = $2;

-- name: list_fine_tuning_jobs
-- Newest first (as OpenAI lists them); $2: the id of the last job of the previous page. $4: metadata the job's
-- must contain (NULL: any); $5: only jobs without metadata (OpenAI's `metadata=null`).
SELECT * FROM fine_tuning_jobs
WHERE tenant_id = $1
  AND ($2::text IS NULL OR (created_at, id) < (SELECT created_at, id FROM fine_tuning_jobs
                                               WHERE id = $2 AND tenant_id = $1))
  AND ($4::jsonb IS NULL OR metadata @> $4::jsonb)
  AND (NOT $5::boolean OR metadata IS NULL)
ORDER BY created_at DESC, id DESC LIMIT $3;

-- name: cancel_fine_tuning_job
-- A job not finished yet becomes cancelled at once; its trainer sees that on its next heartbeat.
-- was_running: whether a trainer holds it (that trainer bills the steps done and releases the job's
-- reservation); was_paused: paused and let go by its trainer (the canceller bills what it trained, recorded
-- on the job); otherwise the canceller releases the reservation.
UPDATE fine_tuning_jobs j SET status = 'cancelled', finished_at = now()
FROM (SELECT id, status, trainer_id FROM fine_tuning_jobs WHERE id = $1 AND tenant_id = $2 FOR UPDATE) before
WHERE j.id = before.id AND j.status IN ('validating_files', 'queued', 'running', 'paused')
RETURNING j.*, before.status = 'running' OR (before.status = 'paused' AND before.trainer_id IS NOT NULL) AS was_running,
          before.status = 'paused' AND before.trainer_id IS NULL AS was_paused;

-- name: pause_fine_tuning_job
-- Queued or running: paused (a running job's trainer sees it on its next heartbeat, checkpoints and lets go).
UPDATE fine_tuning_jobs SET status = 'paused', estimated_finish = NULL, queue_position = NULL
WHERE id = $1 AND tenant_id = $2 AND status IN ('queued', 'running')
RETURNING *;

-- name: resume_fine_tuning_job
-- Paused and let go by its trainer: queued again (its takes start over: a pause is not a failed take).
UPDATE fine_tuning_jobs SET status = 'queued', attempts = 0
WHERE id = $1 AND tenant_id = $2 AND status = 'paused' AND trainer_id IS NULL
RETURNING *;

-- name: let_go_paused_fine_tuning_job
-- The trainer of a paused job ($1, trainer $2) stopped it after a checkpoint: no trainer holds it now.
UPDATE fine_tuning_jobs SET trainer_id = NULL, heartbeat_at = NULL
WHERE id = $1 AND trainer_id = $2 AND status = 'paused'
RETURNING id;

-- name: cancelled_paused_leftovers
-- Jobs of this base model ($1) cancelled while paused whose checkpoints still hold blobs: a trainer removes them.
SELECT DISTINCT j.id FROM fine_tuning_jobs j JOIN fine_tuning_checkpoints c ON c.job_id = j.id AND c.blob_live
WHERE j.base_model_id = $1 AND j.status = 'cancelled' AND j.trainer_id IS NULL;

-- name: list_fine_tuning_events
-- Newest first; $3: the id of the last event of the previous page.
SELECT e.id, e.level, e.type, e.message, e.data, e.created_at FROM fine_tuning_events e
WHERE e.job_id = $1
  AND ($2::text IS NULL OR e.seq < (SELECT seq FROM fine_tuning_events WHERE id = $2 AND job_id = $1))
ORDER BY e.seq DESC LIMIT $3;

-- name: list_fine_tuning_checkpoints
-- Newest first; $2: the id of the last checkpoint of the previous page.
SELECT id, step_number, metrics, fine_tuned_model_checkpoint, created_at, job_id FROM fine_tuning_checkpoints
WHERE job_id = $1
  AND ($2::text IS NULL OR step_number < (SELECT step_number FROM fine_tuning_checkpoints WHERE id = $2 AND job_id = $1))
ORDER BY step_number DESC LIMIT $3;

-- name: insert_fine_tuning_event
INSERT INTO fine_tuning_events (id, job_id, level, type, message, data) VALUES ($1, $2, $3, $4, $5, $6);

-- name: insert_fine_tuning_checkpoint
INSERT INTO fine_tuning_checkpoints (id, job_id, step_number, metrics, fine_tuned_model_checkpoint, sha256, size_bytes)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (job_id, step_number) DO UPDATE SET metrics = excluded.metrics, sha256 = excluded.sha256,
                                                size_bytes = excluded.size_bytes
RETURNING id;

-- name: latest_fine_tuning_checkpoint
SELECT step_number, sha256 FROM fine_tuning_checkpoints WHERE job_id = $1 ORDER BY step_number DESC LIMIT 1;

-- name: claim_validation
-- The oldest job of this base model ($1) waiting for its files to be checked, not being checked by
-- a live trainer ($3 seconds of heartbeat), with takes left ($4); taken by trainer $2. attempts counts
-- validation takes here (a take that crashed, or whose trainer died), then restarts at 0 for training.
UPDATE fine_tuning_jobs j SET trainer_id = $2, heartbeat_at = now(), attempts = j.attempts + 1
WHERE j.id = (SELECT id FROM fine_tuning_jobs
              WHERE base_model_id = $1 AND status = 'validating_files' AND attempts < $4
                AND (heartbeat_at IS NULL OR heartbeat_at < now() - make_interval(secs => $3))
              ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING j.*;

-- name: release_validation
-- Checking the files crashed (not a refusal): the take ends now, so the next one need not wait for
-- the heartbeat to go stale; its attempt stays counted.
UPDATE fine_tuning_jobs SET trainer_id = NULL, heartbeat_at = NULL
WHERE id = $1 AND trainer_id = $2 AND status = 'validating_files'
RETURNING attempts;

-- name: fail_exhausted_validations
-- Jobs of base model $1 whose validation was taken $3 times without an answer (each crashed, or its
-- trainer died: heartbeat stale for $2 seconds): failed, with a clear code.
UPDATE fine_tuning_jobs SET status = 'failed', finished_at = now(), trainer_id = NULL, heartbeat_at = NULL,
    error = jsonb_build_object('code', 'validation_attempts_exhausted', 'param', NULL,
                               'message', 'Checking the files failed ' || attempts || ' times without an answer '
                                          '(an internal error, not a refusal of the file); giving up.')
WHERE base_model_id = $1 AND status = 'validating_files' AND attempts >= $3
  AND (heartbeat_at IS NULL OR heartbeat_at < now() - make_interval(secs => $2))
RETURNING id, tenant_id;

-- name: validated_fine_tuning_job
-- The files passed: queued with the resolved hyperparameters (only if nobody cancelled it meanwhile);
-- attempts restart for training's takes.
UPDATE fine_tuning_jobs SET status = 'queued', resolved = $2, n_examples = $3, file_tokens = $4,
                            trainer_id = NULL, heartbeat_at = NULL, attempts = 0
WHERE id = $1 AND status = 'validating_files'
RETURNING id;

-- name: fail_exhausted_fine_tuning_jobs
-- Running jobs whose trainer stopped beating ($2 seconds) after $3 attempts: failed, with a clear code.
UPDATE fine_tuning_jobs SET status = 'failed', finished_at = now(),
    error = jsonb_build_object('code', 'trainer_attempts_exhausted', 'param', NULL,
                               'message', 'The job''s trainer stopped ' || attempts || ' times; giving up.')
WHERE base_model_id = $1 AND status = 'running' AND attempts >= $3
  AND heartbeat_at < now() - make_interval(secs => $2)
RETURNING *;

-- name: claim_fine_tuning_job
-- A running job of this base model ($1) whose trainer stopped beating for $3 seconds (it resumes from its
-- last checkpoint) first, else fairly across tenants (issue 30, part 9), round robin: each tenant's oldest
-- queued job before anyone's second, among those the tenant whose last job started longest ago (never:
-- first), then arrival; one tenant's many jobs never hold another tenant's behind more than one of them.
-- attempts counts each take.
UPDATE fine_tuning_jobs j SET status = 'running', trainer_id = $2, heartbeat_at = now(), attempts = j.attempts + 1,
                              started_at = coalesce(j.started_at, now()), queue_position = NULL
WHERE j.id = (SELECT q.id FROM fine_tuning_jobs q
              WHERE q.base_model_id = $1 AND q.attempts < $4
                AND (q.status = 'queued'
                     OR (q.status = 'running' AND q.heartbeat_at < now() - make_interval(secs => $3)))
              ORDER BY q.status = 'running' DESC,
                       (SELECT count(*) FROM fine_tuning_jobs o
                        WHERE o.tenant_id = q.tenant_id AND o.base_model_id = q.base_model_id AND o.status = 'queued'
                          AND o.created_at < q.created_at),
                       (SELECT max(p.started_at) FROM fine_tuning_jobs p
                        WHERE p.tenant_id = q.tenant_id AND p.base_model_id = q.base_model_id) ASC NULLS FIRST,
                       q.created_at
              LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING j.*;

-- name: fine_tuning_queue
-- The queued jobs of a base model ($1) in the order claim_fine_tuning_job takes them, each with its work
-- (tokens × epochs) and the work up to and including it; what the running jobs have left is not here.
SELECT id, position, queued, work, sum(work) OVER (ORDER BY position) AS work_through, queue_position
FROM (SELECT j.id, j.queue_position,
             coalesce(j.file_tokens, 0) * coalesce((j.resolved ->> 'n_epochs')::bigint, 1) AS work,
             row_number() OVER (ORDER BY (SELECT count(*) FROM fine_tuning_jobs o
                                          WHERE o.tenant_id = j.tenant_id AND o.base_model_id = j.base_model_id
                                            AND o.status = 'queued' AND o.created_at < j.created_at),
                                         (SELECT max(p.started_at) FROM fine_tuning_jobs p
                                          WHERE p.tenant_id = j.tenant_id AND p.base_model_id = j.base_model_id)
                                         ASC NULLS FIRST, j.created_at) AS position,
             count(*) OVER () AS queued
      FROM fine_tuning_jobs j WHERE j.base_model_id = $1 AND j.status = 'queued') q
ORDER BY position;

-- name: fine_tuning_running
-- What the trainers of a base model ($1) are training now: how many jobs, and when the last should end.
SELECT count(*) AS running, max(estimated_finish) AS until
FROM fine_tuning_jobs WHERE base_model_id = $1 AND status = 'running';

-- name: measured_training_speed
-- Tokens a second this base model's ($1) trainers reached over its last five succeeded jobs, from
-- take to end (model load, validation passes and registration included: what a queued job waits for).
SELECT sum(trained_tokens)::float8 / nullif(sum(extract(epoch FROM finished_at - started_at)), 0)
FROM (SELECT trained_tokens, started_at, finished_at FROM fine_tuning_jobs
      WHERE base_model_id = $1 AND status = 'succeeded' AND trained_tokens > 0 AND started_at IS NOT NULL
      ORDER BY finished_at DESC LIMIT 5) recent;

-- name: set_fine_tuning_queue_position
-- A queued job's place ($2) and estimated finish ($3); no row back once it left the queue.
UPDATE fine_tuning_jobs SET queue_position = $2, estimated_finish = $3
WHERE id = $1 AND status = 'queued'
RETURNING id;

-- name: set_fine_tuning_result_file
UPDATE fine_tuning_jobs SET result_file = $2 WHERE id = $1;

-- name: fine_tuning_step_metrics
-- Every metrics event of a job ($1), in order (a resumed job's steps appear once per take: the last wins).
SELECT data FROM fine_tuning_events WHERE job_id = $1 AND type = 'metrics' ORDER BY seq;

-- name: heartbeat_fine_tuning_job
-- Still ours and still running? No row back: cancelled, or taken by another trainer: stop.
UPDATE fine_tuning_jobs SET heartbeat_at = now(), estimated_finish = coalesce($3, estimated_finish)
WHERE id = $1 AND trainer_id = $2 AND status IN ('running', 'validating_files')
RETURNING id;

-- name: finish_fine_tuning_job
-- The end of a job this trainer holds: $3 status, $4 error, $5 model, $6 adapter, $7 trained tokens.
UPDATE fine_tuning_jobs SET status = $3, error = $4, fine_tuned_model = $5, adapter_id = $6, trained_tokens = $7,
                            finished_at = now(), heartbeat_at = NULL, estimated_finish = NULL
WHERE id = $1 AND trainer_id = $2 AND status IN ('running', 'validating_files')
RETURNING id;

-- name: record_fine_tuning_progress
-- What a job has run so far ($2 trained, $3 validation tokens), written as its trainer reports it: every
-- ending bills it, even one whose trainer's job code failed. A cancelled job keeps its status.
UPDATE fine_tuning_jobs SET trained_tokens = $2, validation_tokens = $3 WHERE id = $1;

-- name: fine_tuning_progress
SELECT trained_tokens, validation_tokens FROM fine_tuning_jobs WHERE id = $1;

-- name: base_model_architecture
SELECT nullif(architecture, '{}'::jsonb) AS architecture FROM base_models WHERE id = $1;

-- name: tenant_checkpoint_bytes
-- The resume state the tenant's ($1) open jobs hold in the blob store, job $2's own earlier checkpoints
-- left out (they go once its next one is stored).
SELECT coalesce(sum(c.size_bytes), 0)::bigint
FROM fine_tuning_checkpoints c JOIN fine_tuning_jobs j ON j.id = c.job_id
WHERE j.tenant_id = $1 AND c.blob_live AND j.id <> $2
  AND j.status IN ('validating_files', 'queued', 'running', 'paused');

-- name: base_model_for_trainer
SELECT id, name FROM base_models WHERE name = $1;

-- name: training_price
-- The price version in effect at $2 for base model $1: its id and training price.
SELECT id, training_micro_usd_per_mtok FROM prices
WHERE base_model_id = $1 AND effective_at <= $2 ORDER BY effective_at DESC LIMIT 1;

-- name: resolve_fine_tuned_model
-- A request naming ft:<base>:<suffix>:<job>: the tenant's ready adapter with that public name.
SELECT a.id, m.name AS base_model
FROM adapters a JOIN base_models m ON m.id = a.base_model_id
WHERE a.tenant_id = $1 AND a.fine_tuned_model = $2 AND a.status = 'ready';

-- name: set_adapter_fine_tuned_model
UPDATE adapters SET fine_tuned_model = $3 WHERE id = $1 AND tenant_id = $2 AND status = 'ready' RETURNING id;

-- name: requeue_fine_tuning_job
-- A trainer stopping on purpose hands its job back: the next take resumes from the last checkpoint
-- without counting this take as a failed attempt.
UPDATE fine_tuning_jobs SET status = 'queued', trainer_id = NULL, heartbeat_at = NULL,
                            attempts = greatest(0, attempts - 1)
WHERE id = $1 AND trainer_id = $2 AND status = 'running'
RETURNING id;

-- name: fine_tuning_job_status
SELECT status FROM fine_tuning_jobs WHERE id = $1;

-- name: retire_checkpoint_blobs
-- Job $1's checkpoints before step $2 no longer hold resume state: their blobs are deleted by the caller.
UPDATE fine_tuning_checkpoints SET blob_live = false
WHERE job_id = $1 AND step_number < $2 AND blob_live
RETURNING sha256;

-- name: fine_tuning_headroom
-- What a job's worst case is checked against at create: the month's spend and limit, prepaid credit.
-- The row stays locked until the job's reservation is written: two creates cannot both pass one limit.
SELECT billing_mode, monthly_spend_limit_micro_usd, reserved_micro_usd, credit_granted_micro_usd,
       spent_total_micro_usd,
       CASE WHEN period_start = date_trunc('month', now(), 'UTC')::date THEN period_spent_micro_usd ELSE 0 END
           AS period_spent_micro_usd
FROM tenant_accounts WHERE tenant_id = $1
FOR UPDATE;

-- name: reserve_fine_tuning_job
-- A job's worst case ($3 micro-USD) held against the tenant's limits while the job lives, keyed by the
-- job id (the request id of its ledger row). gateway_id 'fine-tuning' marks it as a job's: the sweeper
-- keeps it while the job is open (admission.sql, sweep_reservations). in_flight is left alone: a job
-- is not a request in flight (max_concurrent_requests), and release_fine_tuning_reservation matches.
WITH held AS (
    INSERT INTO reservations (request_id, tenant_id, gateway_id, amount_micro_usd)
    VALUES ($1, $2, 'fine-tuning', $3)
    RETURNING tenant_id, amount_micro_usd
)
UPDATE tenant_accounts a
SET reserved_micro_usd = a.reserved_micro_usd + h.amount_micro_usd,
    period_spent_micro_usd = CASE WHEN a.period_start = date_trunc('month', now(), 'UTC')::date
                                  THEN a.period_spent_micro_usd ELSE 0 END,
    period_start = date_trunc('month', now(), 'UTC')::date, updated_at = now()
FROM held h WHERE a.tenant_id = h.tenant_id;

-- name: release_fine_tuning_reservation
-- The job ended: its reservation goes (once: whoever deletes the row gives the amount back). Run in the
-- transaction that writes the job's ledger row, so its cost is never neither reserved nor spent.
WITH released AS (
    DELETE FROM reservations WHERE request_id = $1 AND gateway_id = 'fine-tuning'
    RETURNING tenant_id, amount_micro_usd
)
UPDATE tenant_accounts a SET reserved_micro_usd = a.reserved_micro_usd - r.amount_micro_usd, updated_at = now()
FROM released r WHERE a.tenant_id = r.tenant_id
RETURNING r.amount_micro_usd;

-- name: ready_workers_of_base_model
-- Where a trainer pre-warms the model it trained: the base model's ($1) workers that are ready and
-- beat within $2 seconds.
SELECT url FROM workers
WHERE base_model_id = $1 AND state = 'ready' AND heartbeat_at > now() - make_interval(secs => $2)
ORDER BY url;

-- name: base_model_max_lora_rank
-- The largest adapter rank base model $1's workers serve (vLLM --max-lora-rank, as they registered it).
SELECT max_lora_rank FROM base_models WHERE id = $1;
