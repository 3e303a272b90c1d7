"""The ledger's write path on a real database: idempotent, batched, one bad row never blocks others."""

from __future__ import annotations

import datetime as dt

from lorafleet.billing.ledger_row import LedgerRow
from lorafleet.core import ids
from lorafleet.db import queries
from lorafleet.gateway.metering.writer import LedgerWriter


async def _row(db, make_key, **overrides) -> LedgerRow:
    key = await make_key()
    base = await db.fetchrow(queries.upsert_base_model, ids.base_model_id(), "ledger-test-model", 2048, {}, 16, "generate")
    now = dt.datetime.now(dt.UTC)
    fields = dict(
        request_id=ids.request_id(), tenant_id=key.tenant_id, api_key_id=key.key_id, base_model_id=base["id"],
        model="ledger-test-model", endpoint="completions", outcome="success", http_status=200, streamed=False,
        prompt_tokens=3, completion_tokens=5, worker_url=None, started_at=now, finished_at=now, ttft_ms=1,
        duration_ms=2,
    )
    fields.update(overrides)
    return LedgerRow(**fields)


async def test_rows_are_written_once_even_when_recorded_twice(db, make_key):
    writer = LedgerWriter(db)
    writer.start()
    row = await _row(db, make_key)
    writer.record(row)
    writer.record(row)
    await writer.drain()
    writer.record(LedgerRow(**{**{f: getattr(row, f) for f in row.__struct_fields__}, "completion_tokens": 999}))
    await writer.close()
    stored = await db.fetch("SELECT completion_tokens FROM usage_ledger WHERE request_id = $1", row.request_id)
    assert [r["completion_tokens"] for r in stored] == [5], "the first write wins; retries never double-count"


async def test_a_rejected_row_does_not_block_the_batch(db, make_key):
    writer = LedgerWriter(db)
    writer.start()
    good = [await _row(db, make_key) for _ in range(3)]
    bad = await _row(db, make_key, prompt_tokens=-1)  # violates a CHECK constraint
    for row in (good[0], bad, *good[1:]):
        writer.record(row)
    await writer.drain()
    await writer.close()
    written = await db.fetchval("SELECT count(*) FROM usage_ledger WHERE request_id = ANY($1)", [r.request_id for r in good])
    assert written == 3
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE request_id = $1", bad.request_id) == 0
