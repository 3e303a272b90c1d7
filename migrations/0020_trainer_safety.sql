-- Fine-tuning (issue 28, findings 1-5): every ending after training is billed, with its outcome.

-- A job's ledger row says how the job ended: 'success', 'cancelled' (the tenant stopped it; the steps
-- trained are billed) or 'failed' (the steps trained before the failure are billed). Rollups count every
-- row whose outcome is not 'success' as an error, so a failed job is counted as one.
ALTER TABLE usage_ledger DROP CONSTRAINT usage_ledger_outcome_check;
ALTER TABLE usage_ledger ADD CONSTRAINT usage_ledger_outcome_check
    CHECK (outcome IN ('success', 'upstream_error', 'client_disconnect', 'unavailable', 'cancelled', 'failed'));

-- Validation tokens (the validation passes: a sampled pass every N steps and a full one at the end) are
-- reserved and billed with the trained tokens; what a job ran of them is shown next to its trained tokens.
ALTER TABLE fine_tuning_jobs ADD COLUMN validation_tokens bigint;

-- A checkpoint's resume state (its tar in the blob store) is kept only while it is its job's latest and the
-- job is open; blob_live says whether the blob is still there. Open jobs' live checkpoints count against
-- the tenant's LORAFLEET_TENANT_MAX_CHECKPOINT_BYTES.
ALTER TABLE fine_tuning_checkpoints ADD COLUMN blob_live boolean NOT NULL DEFAULT true;
