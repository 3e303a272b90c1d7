-- The ledger's foreign keys cost three quarters of its insert: PostgreSQL checks each one with a
-- per-row trigger query, five per row (5,000 rows: 160-178 ms with them, 41-51 ms without, on the
-- benchmark box). What they guard cannot go wrong short of a bug: every id in a ledger row was read
-- from this database by the gateway that writes it, and nothing deletes tenants, keys, base models,
-- adapters (soft-deleted) or prices (never edited). The CHECK constraints stay.
ALTER TABLE usage_ledger
    DROP CONSTRAINT usage_ledger_tenant_id_fkey,
    DROP CONSTRAINT usage_ledger_api_key_id_fkey,
    DROP CONSTRAINT usage_ledger_base_model_id_fkey,
    DROP CONSTRAINT usage_ledger_adapter_id_fkey,
    DROP CONSTRAINT usage_ledger_price_id_fkey;
