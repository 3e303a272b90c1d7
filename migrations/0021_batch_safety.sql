-- Batches (issue 28): the batch price pays for deferral, and outputs are bounded.

-- A batch's lines are not dispatched before this (created_at + LORAFLEET_BATCH_MIN_DELAY_SECONDS, as the
-- gateway that took the create was set): the discount buys deferral, not interactive service.
ALTER TABLE batches ADD COLUMN run_after timestamptz;
UPDATE batches SET run_after = created_at;
ALTER TABLE batches ALTER COLUMN run_after SET NOT NULL;

-- A batch's worst-case output (the sum of its lines' answer bounds, gateway/batches/answer_bound.py), held in
-- the tenant's file quota (tenant_storage, kind 'files') from its create until it ends, when its output and
-- error files take that room instead.
ALTER TABLE batches ADD COLUMN output_reserved_bytes bigint NOT NULL DEFAULT 0;

-- The most bytes a line's answer may have (enforced: a larger one is the line's `response_too_large`); an
-- answer larger than the dispatcher keeps in the row is in the blob store under answer_blob until the batch
-- ends (batch_lines holds small state only).
ALTER TABLE batch_lines ADD COLUMN answer_bound integer;
ALTER TABLE batch_lines ADD COLUMN answer_blob text;
