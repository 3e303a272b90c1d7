-- Batches (issue 28): the batch price pays for deferral, and outputs are bounded.

-- A batch's lines are not dispatched before this (created_at + LORAFLEET_BATCH_MIN_DELAY_SECONDS, as the
-- gateway that took the create was set): the discount buys deferral, not interactive service.
ALTER TABLE batches ADD COLUMN run_after timestamptz;
UPDATE batches SET run_after = created_at;
ALTER TABLE batches ALTER COLUMN run_after SET NOT NULL;
