-- Numbers per adapter version (issue 32, part 4) are read from the ledger by adapter id and time.
CREATE INDEX usage_ledger_by_adapter ON usage_ledger (adapter_id, started_at) WHERE adapter_id IS NOT NULL;
