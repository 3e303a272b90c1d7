-- Issue 30, part 4: a job can be paused (its trainer checkpoints and lets go; it keeps its reservation) and
-- resumed (queued again, continuing from that checkpoint).
ALTER TABLE fine_tuning_jobs DROP CONSTRAINT fine_tuning_jobs_status_check;
ALTER TABLE fine_tuning_jobs ADD CONSTRAINT fine_tuning_jobs_status_check
    CHECK (status IN ('validating_files', 'queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled'));
