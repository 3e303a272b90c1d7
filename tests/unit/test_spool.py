"""The ledger spool keeps every row across failed replays (a fake insert stands in for the database)."""

import datetime as dt

from lorafleet.billing.ledger_row import LedgerRow
from lorafleet.gateway.metering.spool import LedgerSpool


def _rows(prefix: str, count: int) -> list[LedgerRow]:
    now = dt.datetime.now(dt.UTC)
    return [LedgerRow(request_id=f"{prefix}{i}", tenant_id="t", api_key_id="k", base_model_id="b", model="m",
                     endpoint="completions", outcome="success", http_status=200, streamed=False, prompt_tokens=1,
                     completion_tokens=2, worker_url=None, started_at=now, finished_at=now, ttft_ms=1, duration_ms=1,
                     cost_pico_usd=3, price_id=None) for i in range(count)]


class FlakyDatabase:
    def __init__(self) -> None:
        self.up = False
        self.stored: dict[str, LedgerRow] = {}

    async def insert(self, rows: list[LedgerRow]) -> int:
        if not self.up:
            raise ConnectionRefusedError("database stopped")
        self.stored.update((row.request_id, row) for row in rows)  # idempotent, like ON CONFLICT DO NOTHING
        return len(rows)


async def test_rows_spooled_before_and_after_a_failed_replay_all_arrive(tmp_path):
    spool = LedgerSpool(tmp_path, "gw_a")
    database = FlakyDatabase()
    spool.append(_rows("first-", 3))
    try:
        await spool.replay(database.insert)  # claims the file, then the database is still away
    except ConnectionRefusedError:
        pass
    spool.append(_rows("second-", 4))  # new rows meanwhile
    spool.append(_rows("third-", 2))
    database.up = True
    assert spool.pending()
    await spool.replay(database.insert)
    assert sorted(database.stored) == sorted(r.request_id for r in _rows("first-", 3) + _rows("second-", 4) + _rows("third-", 2))
    assert not spool.pending() and not list(tmp_path.iterdir())


async def test_another_gateway_replays_a_dead_gateways_spool(tmp_path):
    LedgerSpool(tmp_path, "gw_dead").append(_rows("orphan-", 5))
    database = FlakyDatabase()
    database.up = True
    assert await LedgerSpool(tmp_path, "gw_alive").replay(database.insert) == 5
    assert len(database.stored) == 5


async def test_a_row_spooled_before_exact_costs_keeps_its_cost(tmp_path):
    # An older gateway spooled its rows with the cost in whole micro-USD (before migrations/0012).
    now = dt.datetime.now(dt.UTC).isoformat()
    old = (b'[{"request_id":"old-1","tenant_id":"t","api_key_id":"k","base_model_id":"b","model":"m",'
           b'"endpoint":"completions","outcome":"success","http_status":200,"streamed":false,"prompt_tokens":1,'
           b'"completion_tokens":2,"worker_url":null,"started_at":"' + now.encode() + b'","finished_at":"'
           + now.encode() + b'","ttft_ms":1,"duration_ms":1,"adapter_id":null,"cost_micro_usd":7,"price_id":null}]\n')
    (tmp_path / "ledger-gw_old-1.jsonl").write_bytes(old)
    database = FlakyDatabase()
    database.up = True
    spool = LedgerSpool(tmp_path, "gw_a")
    spool.append(_rows("new-", 1))
    assert await spool.replay(database.insert) == 2
    assert database.stored["old-1"].cost_pico_usd == 7_000_000
    assert database.stored["new-0"].cost_pico_usd == 3
