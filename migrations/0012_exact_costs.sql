-- Every micro-dollar (issue 21): the ledger, the rollups and the accounts keep each request's exact
-- cost in pico-USD (10⁻¹² USD). A price is integer micro-USD per million tokens, so tokens × price
-- is exactly an integer number of pico-USD; rounding to whole micro-USD happens once per aggregate
-- (an invoice line, a usage bucket or total, a balance), never per row (billing/pricing.py).
-- Existing rows were rounded to whole micro-USD when written: their exact amount is that × 10⁶.

ALTER TABLE usage_ledger ADD COLUMN cost_pico_usd bigint NOT NULL DEFAULT 0 CHECK (cost_pico_usd >= 0);
UPDATE usage_ledger SET cost_pico_usd = cost_micro_usd * 1000000 WHERE cost_micro_usd <> 0;
-- The rounded per-row amount goes: a reader that summed it would bring the loss back.
ALTER TABLE usage_ledger DROP COLUMN cost_micro_usd;

ALTER TABLE usage_hourly ADD COLUMN cost_pico_usd bigint NOT NULL DEFAULT 0;
UPDATE usage_hourly SET cost_pico_usd = cost_micro_usd * 1000000 WHERE cost_micro_usd <> 0;
ALTER TABLE usage_hourly DROP COLUMN cost_micro_usd;
ALTER TABLE usage_daily ADD COLUMN cost_pico_usd bigint NOT NULL DEFAULT 0;
UPDATE usage_daily SET cost_pico_usd = cost_micro_usd * 1000000 WHERE cost_micro_usd <> 0;
ALTER TABLE usage_daily DROP COLUMN cost_micro_usd;

-- Accounts: settled spend exactly (numeric: a lifetime of pico-USD can pass bigint's 9.2 million
-- USD). The micro-USD counters admission compares (lorafleet_admit) stay, kept by the ledger writer
-- as the exact amount rounded UP, so a spend limit or a credit balance is never passed by a fraction.
-- exact_period_start is the month period_spent_pico_usd counts: admission zeroes only the micro
-- counter when the month turns, so the exact one carries its own month.
ALTER TABLE tenant_accounts
    ADD COLUMN spent_total_pico_usd numeric NOT NULL DEFAULT 0,
    ADD COLUMN period_spent_pico_usd numeric NOT NULL DEFAULT 0,
    ADD COLUMN exact_period_start date NOT NULL DEFAULT date_trunc('month', now() AT TIME ZONE 'UTC')::date;
UPDATE tenant_accounts SET spent_total_pico_usd = spent_total_micro_usd::numeric * 1000000,
                           period_spent_pico_usd = period_spent_micro_usd::numeric * 1000000,
                           exact_period_start = period_start;

-- An invoice line keeps the exact amount its rounded amount_micro_usd was made from (NULL: a
-- credit line, or a line written before this migration).
ALTER TABLE invoice_lines ADD COLUMN amount_pico_usd numeric;
