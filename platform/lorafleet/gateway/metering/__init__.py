"""What a request costs and who may spend it: admission before, the meter during, the ledger after.

- :mod:`.admission`: rate limits, concurrency caps, budget reservations (verdicts as an enum).
- :mod:`.meter`: token counts as they arrive, and the request's one ledger row.
- :mod:`.ledger_row`: that row, and the named columns its batch insert binds.
- :mod:`.writer`: batched, idempotent inserts; :mod:`.spool` keeps rows through a database outage.
- :mod:`.sweeper`: this gateway's heartbeat; frees the reservations of gateways that died.
- :mod:`.refusals`: 402/429 counts per tenant and day, for the dashboard.
"""
