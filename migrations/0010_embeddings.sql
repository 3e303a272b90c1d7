-- What a base model's workers do: generate text (chat, completions, responses) or embed (pooling
-- runner). A model name serves one task, so the gateway refuses the wrong route with a 400.
ALTER TABLE base_models ADD COLUMN task text NOT NULL DEFAULT 'generate' CHECK (task IN ('generate', 'embed'));
