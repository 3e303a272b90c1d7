"""Admission leases on PostgreSQL: how big a lease the database grants, what releasing one gives back,
and a burst of one key's concurrent requests through the gateway that leases and still adds up."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import httpx
import pytest
from lorafleet.core import ids
from lorafleet.db import queries
from lorafleet.gateway.metering.leases import LEASE_SHARE

from tests.helpers import TenantKey, ledger_cost, pico, settled
from tests.inprocess.conftest import STUB_MODEL

GATEWAY = "gw_leasetest"
WIN = 60.0


async def _lease(db: asyncpg.Pool, tenant: TenantKey, amount: int, tokens: int, max_units: int) -> tuple[asyncpg.Record, str, str]:
    lease_id, request_id = f"lease_{ids.random_token(12)}", ids.request_id()
    row = await db.fetchrow(queries.lease_admission, lease_id, request_id, tenant.tenant_id, tenant.key_id, GATEWAY,
                            amount, tokens, max_units, LEASE_SHARE, "on")
    return row, lease_id, request_id


async def _release(db: asyncpg.Pool, lease_id: str, key_id: str, unused_requests: int, unused_tokens: int) -> None:
    await db.execute(queries.release_leases, [lease_id], [key_id], [unused_requests], [unused_tokens])


async def _account(db: asyncpg.Pool, tenant: TenantKey) -> asyncpg.Record:
    return await db.fetchrow("SELECT * FROM tenant_accounts WHERE tenant_id = $1", tenant.tenant_id)


async def _tat(db: asyncpg.Pool, tenant: TenantKey) -> asyncpg.Record:
    return await db.fetchrow("SELECT extract(epoch FROM request_tat - now())::float8 AS requests, "
                             "extract(epoch FROM token_tat - now())::float8 AS tokens FROM rate_limit_state "
                             "WHERE api_key_id = $1", tenant.key_id)


async def test_a_lease_takes_at_most_a_64th_of_the_spend_headroom_and_is_one_reservation(db, tenant):
    await db.execute("UPDATE tenant_accounts SET monthly_spend_limit_micro_usd = 64000 WHERE tenant_id = $1",
                     tenant.tenant_id)
    row, lease_id, _ = await _lease(db, tenant, amount=100, tokens=10, max_units=256)
    assert (row["verdict"], row["units"]) == ("admitted", 10)  # 64,000 / 64 / 100
    account = await _account(db, tenant)
    assert (account["reserved_micro_usd"], account["in_flight"]) == (1000, 1)
    assert await db.fetchval("SELECT amount_micro_usd FROM reservations WHERE request_id = $1", lease_id) == 1000

    await _release(db, lease_id, tenant.key_id, 4, 40)
    account = await _account(db, tenant)
    assert (account["reserved_micro_usd"], account["in_flight"]) == (0, 0)
    await _release(db, lease_id, tenant.key_id, 4, 40)  # a replayed release changes nothing
    assert (await _account(db, tenant))["reserved_micro_usd"] == 0


@pytest.mark.parametrize("limits", [
    "UPDATE tenant_accounts SET monthly_spend_limit_micro_usd = 100 * 64 WHERE tenant_id = $1",   # room for 1/64 × 64
    "UPDATE tenant_accounts SET max_concurrent_requests = 1000 WHERE tenant_id = $1",              # a concurrency cap
])
async def test_near_a_limit_or_with_a_concurrency_cap_the_request_is_admitted_alone(db, tenant, limits):
    await db.execute(limits, tenant.tenant_id)
    row, lease_id, request_id = await _lease(db, tenant, amount=100, tokens=10, max_units=256)
    assert (row["verdict"], row["units"]) == ("admitted", 1)
    assert await db.fetchval("SELECT amount_micro_usd FROM reservations WHERE request_id = $1", request_id) == 100
    assert await db.fetchval("SELECT count(*) FROM reservations WHERE request_id = $1", lease_id) == 0


async def test_a_refused_request_is_refused_as_one_admission_would_be(db, tenant):
    await db.execute("UPDATE tenant_accounts SET monthly_spend_limit_micro_usd = 50 WHERE tenant_id = $1",
                     tenant.tenant_id)
    row, _, _ = await _lease(db, tenant, amount=100, tokens=10, max_units=256)
    assert (row["verdict"], row["units"]) == ("spend_limit", 1)
    account = await _account(db, tenant)
    assert (account["reserved_micro_usd"], account["in_flight"]) == (0, 0)


async def test_a_lease_takes_its_share_of_the_rate_and_gives_back_what_it_did_not_use(db, tenant):
    # 640 requests/min and 64,000 tokens/min at 100 a request: a lease may take 10 of each (1/64).
    await db.execute("UPDATE api_keys SET requests_per_minute = 640, tokens_per_minute = 64000 WHERE id = $1",
                     tenant.key_id)
    row, lease_id, _ = await _lease(db, tenant, amount=0, tokens=100, max_units=256)
    assert (row["verdict"], row["units"]) == ("admitted", 10)
    assert row["requests_remaining"] == 640 - 10 and row["tokens_remaining"] == 64000 - 1000
    held = await _tat(db, tenant)
    # GCRA: 10 requests are 10 × 60/640 s of the key's rate, 1,000 tokens 1,000 × 60/64000 s.
    assert held["requests"] == pytest.approx(10 * WIN / 640, abs=0.05)
    assert held["tokens"] == pytest.approx(1000 * WIN / 64000, abs=0.05)

    await _release(db, lease_id, tenant.key_id, 7, 700)  # three requests of 100 tokens used
    after = await _tat(db, tenant)
    assert after["requests"] == pytest.approx(3 * WIN / 640, abs=0.05)
    assert after["tokens"] == pytest.approx(300 * WIN / 64000, abs=0.05)
    await _release(db, lease_id, tenant.key_id, 7, 700)
    replayed = await _tat(db, tenant)
    assert replayed["requests"] == pytest.approx(after["requests"], abs=0.05), "released once"
    assert replayed["tokens"] == pytest.approx(after["tokens"], abs=0.05), "released once"


async def test_a_burst_of_one_keys_requests_is_leased_and_every_micro_dollar_adds_up(platform, db, tenant):
    await db.execute("INSERT INTO prices (base_model_id, prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok, "
                     "adapter_surcharge_micro_usd_per_mtok, effective_at) VALUES ($1, 150000, 600000, 0, $2)",
                     platform.base_model_id, dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5))
    await db.execute("UPDATE tenant_accounts SET monthly_spend_limit_micro_usd = 10000000000 WHERE tenant_id = $1",
                     tenant.tenant_id)
    await db.execute("UPDATE api_keys SET requests_per_minute = 100000, tokens_per_minute = 100000000 WHERE id = $1",
                     tenant.key_id)
    leases = platform.app.state.services.admission.leases
    granted = leases.granted
    await asyncio.sleep(0.5)  # the catalog learns the price

    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        async def one(index: int) -> httpx.Response:
            return await http.post("/v1/chat/completions", json={
                "model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                "stream": index % 3 == 0})

        responses = await asyncio.gather(*(one(index) for index in range(60)))
    assert [r.status_code for r in responses] == [200] * 60
    assert 1 <= leases.granted - granted <= 4, "concurrent requests share a lease rather than each opening one"
    remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in responses]
    assert all(100000 - 60 <= value < 100000 for value in remaining), remaining

    account = await settled(db, tenant.tenant_id)  # no lease and no reservation left: every row is in
    assert await db.fetchval("SELECT count(*) FROM reservations WHERE tenant_id = $1", tenant.tenant_id) == 0
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id) == 60
    spent = await ledger_cost(db, tenant.tenant_id)
    assert spent > 0
    assert account["period_spent_pico_usd"] == account["spent_total_pico_usd"] == spent
    billed = [pico(r.headers["x-lorafleet-cost-micro-usd"]) for r in responses if "x-lorafleet-cost-micro-usd" in r.headers]
    streamed = [r.headers["x-request-id"] for r in responses if "x-lorafleet-cost-micro-usd" not in r.headers]
    assert len(billed) == 40 and len(streamed) == 20
    streamed_cost = await db.fetchval("SELECT sum(cost_pico_usd) FROM usage_ledger WHERE request_id = ANY($1)", streamed)
    assert sum(billed) + streamed_cost == spent
