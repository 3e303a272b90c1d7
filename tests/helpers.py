"""What tests share besides fixtures: waiting for the ledger, the admin API, the money rule written out.

Tests import this module, never a conftest or another test. Nothing here sleeps a fixed time to
wait out a cache: every wait polls for the state it needs, with a deadline.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import NoReturn, TypeVar

import asyncpg
import httpx
import pytest
from lorafleet.billing.invoices import close_period
from lorafleet.core import ids

T = TypeVar("T")


def missing_capability(reason: str) -> NoReturn:
    """Skip a test this machine cannot run — but fail it under CI=true, where everything must run."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true, and this test cannot run here: {reason}")
    pytest.skip(reason)


@dataclass
class TenantKey:
    tenant_id: str
    key_id: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], *, timeout: float = 10.0,
                     interval: float = 0.05, what: str = "the expected state") -> T:
    """Poll ``probe`` until ``done`` holds for its result; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s (last: {value!r})"
        await asyncio.sleep(interval)


async def ledger_row(db: asyncpg.Pool, request_id: str, timeout: float = 5.0) -> asyncpg.Record:
    """The ledger row of a request; the gateway writes rows in batches every few ms."""
    return await eventually(lambda: db.fetchrow("SELECT * FROM usage_ledger WHERE request_id = $1", request_id),
                            lambda row: row is not None, timeout=timeout, what=f"a ledger row for {request_id}")


async def wait_rows(db: asyncpg.Pool, tenant_id: str, count: int, timeout: float = 10.0) -> None:
    """Until the tenant has ``count`` ledger rows."""
    await eventually(lambda: db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant_id),
                     lambda found: found >= count, timeout=timeout, what=f"{count} ledger rows")


async def settled(db: asyncpg.Pool, tenant_id: str, timeout: float = 20.0) -> asyncpg.Record:
    """The tenant's account once no reservation is outstanding.

    Only a metered tenant (one with a limit) reserves, so only for such a tenant does this mean every
    request has its ledger row; for the others, use ``wait_rows``.
    """
    return await eventually(lambda: db.fetchrow("SELECT * FROM tenant_accounts WHERE tenant_id = $1", tenant_id),
                            lambda account: account["reserved_micro_usd"] == 0 and account["in_flight"] == 0,
                            timeout=timeout, what="a settled account")


async def ledger_cost(db: asyncpg.Pool, tenant_id: str) -> int:
    """The tenant's exact ledger cost, in pico-USD (10⁻¹² USD)."""
    return int(await db.fetchval("SELECT coalesce(sum(cost_pico_usd), 0) FROM usage_ledger WHERE tenant_id = $1",
                                 tenant_id))


def expected_cost(prompt_tokens: int, completion_tokens: int, prompt_price: int, completion_price: int,
                  surcharge: int = 0, *, cached_tokens: int = 0, cached_price: int | None = None) -> int:
    """The documented exact cost, written out independently of the code under test: pico-USD, never rounded.
    ``cached_tokens`` of the prompt are priced at ``cached_price`` (default: the prompt price)."""
    cached_price = prompt_price if cached_price is None else cached_price
    return ((prompt_tokens - cached_tokens) * prompt_price + cached_tokens * cached_price
            + completion_tokens * completion_price + surcharge * (prompt_tokens + completion_tokens))


def half_up(pico_usd: int) -> int:
    """The documented rounding of an aggregate to whole micro-USD, written out independently: half up."""
    quotient, remainder = divmod(pico_usd, 1_000_000)
    return quotient + (1 if remainder * 2 >= 1_000_000 else 0)


def pico(micro_usd_text: str) -> int:
    """An exact decimal micro-USD amount (the cost header, usage's cost_micro_usd) in pico-USD."""
    amount = Decimal(micro_usd_text) * 1_000_000
    assert amount == amount.to_integral_value(), micro_usd_text  # never finer than a pico-dollar
    return int(amount)


def admin(gateway, env: dict[str, str]) -> httpx.AsyncClient:
    """The admin API of ``gateway`` (anything with a ``url``), with the operator's token from ``env``."""
    return httpx.AsyncClient(base_url=gateway.url, timeout=30,
                             headers={"Authorization": f"Bearer {env['LORAFLEET_ADMIN_TOKEN']}"})


async def set_price(gateway, env: dict[str, str], model: str, prompt: int, completion: int, surcharge: int = 0,
                    *, cached_prompt: int | None = None, batch_discount_bps: int | None = None) -> dict:
    """A new price version through the admin API; the gateway that takes it applies it at once."""
    body = {"base_model": model, "prompt_micro_usd_per_mtok": prompt, "completion_micro_usd_per_mtok": completion,
            "adapter_surcharge_micro_usd_per_mtok": surcharge}
    if cached_prompt is not None:
        body["cached_prompt_micro_usd_per_mtok"] = cached_prompt
    if batch_discount_bps is not None:
        body["batch_discount_bps"] = batch_discount_bps
    async with admin(gateway, env) as api:
        response = await api.post("/admin/prices", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def insert_adapter(db: asyncpg.Pool, tenant_id: str, base_model_id: str, name: str) -> str:
    """A ready adapter row (no weights: for tests about who may see or touch it); its id."""

    adapter_id = ids.new_id("adp")
    sha256 = "0" * 64
    await db.execute("INSERT INTO blobs (sha256, size_bytes) VALUES ($1, 1) ON CONFLICT DO NOTHING", sha256)
    await db.execute(
        "INSERT INTO adapters (id, tenant_id, name, base_model_id, rank, lora_alpha, target_modules, config, sha256, "
        "size_bytes, status) VALUES ($1, $2, $3, $4, 8, 16, $5, $6, $7, 1, 'ready')",
        adapter_id, tenant_id, name, base_model_id, ["q_proj"], {"r": 8}, sha256)
    return adapter_id


async def give_weights(platform, db: asyncpg.Pool, adapter_id: str) -> None:
    """Real bytes in the gateway's blob store for the adapter (insert_adapter writes a row only)."""
    import hashlib

    from lorafleet.adapters.blobstore import LocalBlobStore

    weights = f"weights of {adapter_id}".encode()
    sha256 = hashlib.sha256(weights).hexdigest()
    source = platform.app.state.services.settings.data_path / f"{adapter_id}.weights"
    source.write_bytes(weights)
    LocalBlobStore(platform.app.state.services.settings.resolved_blob_dir).put(sha256, source)
    await db.execute("INSERT INTO blobs (sha256, size_bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING", sha256,
                     len(weights))
    await db.execute("UPDATE adapters SET sha256 = $2, size_bytes = $3 WHERE id = $1", adapter_id, sha256, len(weights))


async def close_this_month(db: asyncpg.Pool, tenant_id: str) -> str:
    """The tenant's invoice for the current month, closed now; its id."""


    now = dt.datetime.now(dt.UTC)
    await close_period(db, f"{now:%Y-%m}", now=now + dt.timedelta(days=40), tenant_id=tenant_id)
    return await db.fetchval("SELECT id FROM invoices WHERE tenant_id = $1 ORDER BY created_at DESC LIMIT 1", tenant_id)


@asynccontextmanager
async def dashboard(url: str, secret: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A dashboard session signed in with ``secret``: (client, the session's CSRF token)."""

    async with httpx.AsyncClient(base_url=url, follow_redirects=False, timeout=30) as http:
        form = await http.get("/dashboard/login")
        login_csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        signed = await http.post("/dashboard/login", data={"api_key": secret, "csrf": login_csrf})
        assert signed.status_code == 303, signed.text[:300]
        page = await http.get("/dashboard")
        yield http, re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def last_sent(platform) -> dict:
    """The body the latest call sent to a stub worker: of the stub called last (with several stubs, the last
    of their lists joined is not the latest call)."""
    called = [worker.behaviour for worker in platform.workers if worker.behaviour.received]
    assert called, "no worker was called"
    return max(called, key=lambda behaviour: behaviour.last_received).received[-1]
