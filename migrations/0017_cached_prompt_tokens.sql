-- Cached prompt tokens: the prompt tokens a request's engine found in its prefix cache (vLLM reports
-- them in whole KV blocks, --enable-prompt-tokens-details), recorded per request and priced at the
-- price version's cached-prompt price. Existing versions price them as prompt tokens (no discount);
-- NULL (a row written without the column) means the same.
ALTER TABLE prices ADD COLUMN cached_prompt_micro_usd_per_mtok bigint;
UPDATE prices SET cached_prompt_micro_usd_per_mtok = prompt_micro_usd_per_mtok;
ALTER TABLE prices ADD CONSTRAINT prices_cached_prompt_check
        CHECK (cached_prompt_micro_usd_per_mtok >= 0 AND cached_prompt_micro_usd_per_mtok <= prompt_micro_usd_per_mtok);

-- Part of prompt_tokens, never more.
ALTER TABLE usage_ledger ADD COLUMN cached_prompt_tokens bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT usage_ledger_cached_prompt_check
        CHECK (cached_prompt_tokens >= 0 AND cached_prompt_tokens <= prompt_tokens);
ALTER TABLE usage_hourly ADD COLUMN cached_prompt_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE usage_daily ADD COLUMN cached_prompt_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE invoice_lines ADD COLUMN cached_prompt_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN cached_prompt_micro_usd_per_mtok bigint;
