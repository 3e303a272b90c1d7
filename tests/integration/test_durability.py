"""Money survives failures: a gateway killed mid-request, PostgreSQL stopped while requests flow."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import asyncpg
import httpx
from lorafleet.db import create_pool
from lorafleet.db.embedded import start_embedded, stop_embedded
from lorafleet.db.migrate import migrate
from lorafleet.devtools.services import platform_env, start_gateway, start_worker
from lorafleet.tenancy import TenancyService

from tests.helpers import admin, set_price

# Every gateway in these tests heartbeats well inside the others' dead-after window.
FAST_PRESENCE = {"LORAFLEET_GATEWAY_HEARTBEAT_SECONDS": "0.5", "LORAFLEET_GATEWAY_DEAD_AFTER_SECONDS": "4"}


async def test_a_killed_gateways_reservation_is_released_and_leaves_no_ledger_row(gateway, gateways, base_env, db,
                                                                                   model_name, make_key):
    await set_price(gateway, base_env, model_name, 1_000_000, 2_000_000)
    doomed = gateways.start(**FAST_PRESENCE)
    gateways.start(**FAST_PRESENCE)  # a survivor whose sweeper does the releasing
    key = await make_key()
    async with admin(gateway, base_env) as api:
        await api.patch(f"/admin/tenants/{key.tenant_id}", json={"monthly_spend_limit_micro_usd": 10_000_000})
    await asyncio.sleep(1.0)

    request_id = None
    async with httpx.AsyncClient(base_url=doomed.url, timeout=60, headers={"Authorization": f"Bearer {key.secret}"}) as http:
        try:
            async with http.stream("POST", "/v1/completions", json={
                "model": model_name, "prompt": "Tell a long story", "max_tokens": 400, "ignore_eos": True,
                "stream": True}) as response:
                assert response.status_code == 200
                request_id = response.headers["x-request-id"]
                lines = response.aiter_lines()
                async for line in lines:
                    if line.startswith("data: {"):
                        break  # tokens are flowing: the request is mid-way
                reservation = await db.fetchrow("SELECT * FROM reservations WHERE request_id = $1", request_id)
                assert reservation is not None and reservation["amount_micro_usd"] > 0
                os.killpg(doomed.process.pid, signal.SIGKILL)
                doomed.process.wait(10)
                async for _ in lines:
                    pass
        except httpx.HTTPError:
            pass  # the connection died with the gateway, as it should
    assert request_id is not None

    deadline = time.monotonic() + 30
    while await db.fetchval("SELECT count(*) FROM reservations WHERE request_id = $1", request_id):
        assert time.monotonic() < deadline, "the sweeper never released the dead gateway's reservation"
        await asyncio.sleep(0.2)
    account = await db.fetchrow("SELECT * FROM tenant_accounts WHERE tenant_id = $1", key.tenant_id)
    assert account["reserved_micro_usd"] == 0 and account["in_flight"] == 0
    await asyncio.sleep(1.0)
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", key.tenant_id) == 0, \
        "a request whose gateway died never reports, so no row may appear for it"

    # The tenant's budget is whole again: the next request is admitted and billed once.
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60, headers={"Authorization": f"Bearer {key.secret}"}) as http:
        after = await http.post("/v1/completions", json={"model": model_name, "prompt": "Hi", "max_tokens": 2})
    assert after.status_code == 200


async def test_postgres_stopped_while_requests_flow_then_every_completed_request_has_one_row(
        tmp_path, log_dir, tiny_model_path):
    from tests.tiny_llama import TINY_NAME

    pgdata = tmp_path / "pgdata"
    dsn = start_embedded(pgdata)
    worker = gateway = None
    try:
        await migrate(dsn)
        setup = await asyncpg.connect(dsn)
        tenancy = TenancyService(setup)
        tenant = await tenancy.create_tenant("outage")
        key = await tenancy.create_key(tenant.id)
        await setup.close()

        env = dict(platform_env(dsn, tiny_model_path, tmp_path / "data"), LORAFLEET_MODEL_NAME=TINY_NAME,
                   LORAFLEET_ENGINE_EXTRA_ARGS="--dtype float32", **FAST_PRESENCE)
        worker = start_worker(env, log_dir)
        gateway = start_gateway(env, log_dir)

        outcomes: list[tuple[float, int, str | None, str | None]] = []  # (time, status, request id, error code)
        stop = asyncio.Event()

        async def traffic(http: httpx.AsyncClient) -> None:
            while not stop.is_set():
                try:
                    response = await http.post("/v1/completions", json={"model": TINY_NAME, "prompt": "Hello there",
                                                                        "max_tokens": 3})
                except httpx.HTTPError:
                    continue
                code = None if response.status_code == 200 else response.json()["error"]["code"]
                outcomes.append((time.monotonic(), response.status_code, response.headers.get("x-request-id"), code))

        async with httpx.AsyncClient(base_url=gateway.url, timeout=60,
                                     headers={"Authorization": f"Bearer {key.secret}"}) as http:
            flows = [asyncio.create_task(traffic(http)) for _ in range(3)]
            await asyncio.sleep(2.0)
            assert stop_embedded(pgdata), "the embedded PostgreSQL was not running"
            down_at = time.monotonic()
            await asyncio.sleep(6.0)
            up_at = time.monotonic()
            assert start_embedded(pgdata) == dsn
            await asyncio.sleep(4.0)
            stop.set()
            await asyncio.gather(*flows)

        served_while_down = [o for o in outcomes if down_at < o[0] < up_at and o[1] == 200]
        assert served_while_down, "requests must keep flowing while the database is down"
        statuses = {o[1] for o in outcomes}
        assert statuses <= {200, 503}, statuses
        # 503s before admission (an unknown key, a budget that cannot be checked) leave no row; all else does.
        unadmitted = {"database_unavailable", "billing_unavailable"}
        expected = {o[2] for o in outcomes if o[1] == 200 or o[3] not in unadmitted}
        completed = {o[2] for o in outcomes if o[1] == 200}

        pool = await create_pool(dsn, max_size=2)
        try:
            deadline = time.monotonic() + 60
            while True:
                rows = await pool.fetch("SELECT request_id, outcome FROM usage_ledger WHERE tenant_id = $1", tenant.id)
                if len(rows) >= len(expected) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            recorded = [r["request_id"] for r in rows]
            assert len(recorded) == len(set(recorded))
            missing = [o for o in outcomes if o[2] in expected - set(recorded)]
            extra = set(recorded) - expected
            assert not missing and not extra, (missing, extra, down_at, up_at)
            assert {r["request_id"] for r in rows if r["outcome"] == "success"} == completed
            rollup = await pool.fetchval("SELECT sum(requests) FROM usage_hourly WHERE tenant_id = $1", tenant.id)
            assert rollup == len(expected)
        finally:
            await pool.close()
        assert "ledger_spooled" in gateway.log_text(), "the outage must have gone through the spool"
        assert not list((tmp_path / "data" / "spool").glob("ledger-*")), "the spool is empty once replayed"
    finally:
        for service in (gateway, worker):
            if service is not None:
                service.stop()
        stop_embedded(pgdata)
