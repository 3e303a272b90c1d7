-- The model a batch's lines name (OpenAI's Batch.model), set when its lines are validated.
ALTER TABLE batches ADD COLUMN model TEXT;
