-- Issue 30, part 9: where a queued job stands (its last "position in the queue" event, so a change is
-- said once), and the job's result file (OpenAI's step-metrics CSV, purpose fine-tune-results).
ALTER TABLE fine_tuning_jobs ADD COLUMN queue_position INTEGER;
ALTER TABLE fine_tuning_jobs ADD COLUMN result_file TEXT;
