-- Batches: how often a batch's validation was taken (a gateway that died on it), so a file that kills its
-- validator fails the batch after a few takes instead of looping until the window ends.
ALTER TABLE batches ADD COLUMN validation_attempts integer NOT NULL DEFAULT 0;
-- The claim of lines looks for open batches of one base model with lines ready to run.
CREATE INDEX batches_in_progress ON batches (created_at) WHERE status = 'in_progress';
