"""Shared steps of the money tests: the admin API, prices, waiting for the ledger to settle."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
from lorafleet.devtools.services import Service

# The gateways re-read prices every LORAFLEET_WORKER_REFRESH_SECONDS (0.5 s in tests).
PRICE_PROPAGATION_SECONDS = 1.5


def admin(gateway: Service, env: dict[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gateway.url, timeout=30,
                             headers={"Authorization": f"Bearer {env['LORAFLEET_ADMIN_TOKEN']}"})


async def set_price(gateway: Service, env: dict[str, str], model: str, prompt: int, completion: int,
                    surcharge: int = 0) -> dict:
    async with admin(gateway, env) as api:
        response = await api.post("/admin/prices", json={
            "base_model": model, "prompt_micro_usd_per_mtok": prompt, "completion_micro_usd_per_mtok": completion,
            "adapter_surcharge_micro_usd_per_mtok": surcharge})
    assert response.status_code == 201, response.text
    await asyncio.sleep(PRICE_PROPAGATION_SECONDS)
    return response.json()


async def settled(db: asyncpg.Pool, tenant_id: str, timeout: float = 20.0) -> asyncpg.Record:
    """The tenant's account once no reservation is outstanding.

    Only a metered tenant (one with a limit) reserves, so only for such a tenant does this mean every
    request has its ledger row; for the others, use ``wait_rows``.
    """
    deadline = time.monotonic() + timeout
    while True:
        account = await db.fetchrow("SELECT * FROM tenant_accounts WHERE tenant_id = $1", tenant_id)
        if (account["reserved_micro_usd"] == 0 and account["in_flight"] == 0) or time.monotonic() > deadline:
            return account
        await asyncio.sleep(0.1)


async def ledger_cost(db: asyncpg.Pool, tenant_id: str) -> int:
    return await db.fetchval("SELECT coalesce(sum(cost_micro_usd), 0)::bigint FROM usage_ledger WHERE tenant_id = $1",
                             tenant_id)


def expected_cost(prompt_tokens: int, completion_tokens: int, prompt_price: int, completion_price: int,
                  surcharge: int = 0) -> int:
    """The documented rule, written out independently of the code under test: round half up."""
    exact = prompt_tokens * prompt_price + completion_tokens * completion_price + surcharge * (prompt_tokens + completion_tokens)
    quotient, remainder = divmod(exact, 1_000_000)
    return quotient + (1 if remainder * 2 >= 1_000_000 else 0)


async def wait_rows(db: asyncpg.Pool, tenant_id: str, count: int, timeout: float = 10.0) -> None:
    """Until the tenant has ``count`` ledger rows (the gateway writes them in batches every few ms)."""
    deadline = time.monotonic() + timeout
    while await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant_id) < count:
        assert time.monotonic() < deadline, "ledger rows did not arrive"
        await asyncio.sleep(0.05)
