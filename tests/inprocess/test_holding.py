"""Requests held while no worker of their model is ready: bounded, dropped when their client leaves, woken once.

Each test has a base model of its own whose only worker (a stub) is registered asleep, and a
gateway of its own with the hold settings under test; waking the worker lets the held requests
through.
"""

from __future__ import annotations

import asyncio
import math

import asyncpg
import httpx
import pytest

from tests.helpers import eventually, ledger_row, set_price, settled

PROMPT_BYTES = 4000


def _body(model: str, marker: str, *, size: int = 0, stream: bool = False) -> dict:
    prompt = marker + " " + "x" * size if size else marker
    return {"model": model, "prompt": prompt, "max_tokens": 4, "stream": stream}


async def _post(url: str, tenant, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, headers=tenant.headers, timeout=60) as http:
        if not body.get("stream"):
            return await http.post("/v1/completions", json=body)
        async with http.stream("POST", "/v1/completions", json=body) as response:
            await response.aread()
            return response


async def _held(gateway, model, count: int) -> None:
    holds = gateway.services.holds
    await eventually(lambda: _value(holds.by_model.get(model.id, 0)), lambda held: held == count,
                     what=f"{count} requests held")


async def _value(value):
    return value


async def _signals(url: str, model) -> dict:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.get(f"/autoscaling/{model.name}")
    assert response.status_code == 200, response.text
    return response.json()


def _sent(model, marker: str) -> list[dict]:
    return [body for body in model.worker.behaviour.received if body.get("prompt", "").startswith(marker)]


@pytest.mark.parametrize(("setting", "value", "size", "who", "status", "code"), [
    ("TENANT_HOLD_MAX_REQUESTS", "2", 0, "same", 429, "too_many_held_requests"),
    ("TENANT_HOLD_MAX_BYTES", str(int(PROMPT_BYTES * 2.5)), PROMPT_BYTES, "same", 429, "too_many_held_requests"),
    ("HOLD_MAX_REQUESTS", "2", 0, "other", 503, "hold_capacity_exhausted"),
    ("HOLD_MAX_BYTES", str(int(PROMPT_BYTES * 2.5)), PROMPT_BYTES, "other", 503, "hold_capacity_exhausted"),
])
async def test_holds_are_capped_in_count_and_bytes_per_tenant_and_per_gateway(
        start_gateway, sleeping_model, db, tenant, other_tenant, setting, value, size, who, status, code):
    gateway = await start_gateway(**{setting: value, "WAKE_TIMEOUT_SECONDS": "60"})
    model = sleeping_model
    held = [asyncio.create_task(_post(gateway.url, tenant, _body(model.name, f"held{i}", size=size)))
            for i in range(2)]
    await _held(gateway, model, 2)

    third = await _post(gateway.url, tenant if who == "same" else other_tenant, _body(model.name, "refused", size=size))
    assert third.status_code == status, third.text
    assert third.json()["error"]["code"] == code and int(third.headers["Retry-After"]) >= 1
    row = await ledger_row(db, third.headers["x-request-id"])
    assert (row["outcome"], row["http_status"], row["cost_pico_usd"], row["completion_tokens"]) == \
        ("unavailable", status, 0, 0)
    if who == "same":
        # A tenant's cap is its own: another tenant's request is still held, and served.
        held.append(asyncio.create_task(_post(gateway.url, other_tenant, _body(model.name, "other", size=size))))
        await _held(gateway, model, 3)

    await model.wake(db)
    responses = await asyncio.gather(*held)
    assert [r.status_code for r in responses] == [200] * len(held), [r.text for r in responses]
    assert not _sent(model, "refused"), "a refused request never reaches a worker"
    assert gateway.services.holds.count == 0 and gateway.services.holds.bytes == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_held_request_whose_client_leaves_is_dropped_unbilled_and_its_reservation_released(
        start_gateway, sleeping_model, db, tenant, stream):
    gateway = await start_gateway(WAKE_TIMEOUT_SECONDS="60")
    model = sleeping_model
    await set_price(gateway, {"LORAFLEET_ADMIN_TOKEN": gateway.services.settings.admin_token}, model.name, 1_000_000,
                    2_000_000)
    # A spend limit makes the tenant metered: admission reserves its worst case in the database.
    await db.execute("UPDATE tenant_accounts SET monthly_spend_limit_micro_usd = 10000000 WHERE tenant_id = $1",
                     tenant.tenant_id)
    request_ids: list[str] = []

    async def leaving() -> None:
        async with httpx.AsyncClient(base_url=gateway.url, headers=tenant.headers, timeout=60) as http:
            if stream:
                async with http.stream("POST", "/v1/completions", json=_body(model.name, "gone", stream=True)) as response:
                    request_ids.append(response.headers["x-request-id"])
                    async for _ in response.aiter_raw():
                        pass
            else:
                await http.post("/v1/completions", json=_body(model.name, "gone"))

    client = asyncio.create_task(leaving())
    await _held(gateway, model, 1)
    account = await db.fetchrow("SELECT * FROM tenant_accounts WHERE tenant_id = $1", tenant.tenant_id)
    assert account["reserved_micro_usd"] > 0 and account["in_flight"] == 1, "admitted: its worst case is reserved"

    client.cancel()  # the client hangs up while its request is held
    with pytest.raises(asyncio.CancelledError):
        await client
    await _held(gateway, model, 0)
    account = await settled(db, tenant.tenant_id)
    assert account["reserved_micro_usd"] == 0
    request_id = request_ids[0] if stream else await db.fetchval(
        "SELECT request_id FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id)
    row = await ledger_row(db, request_id)
    assert (row["outcome"], row["http_status"], row["prompt_tokens"], row["completion_tokens"], row["cost_pico_usd"]) \
        == ("client_disconnect", 499, 0, 0, 0)
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id) == 1

    # The worker wakes: the departed request is not run, a new one is.
    await model.wake(db)
    served = await _post(gateway.url, tenant, _body(model.name, "after"))
    assert served.status_code == 200, served.text
    assert not _sent(model, "gone") and len(_sent(model, "after")) == 1


async def test_one_wake_notify_per_model_whatever_the_number_held(start_gateway, sleeping_model, db, tenant,
                                                                  inprocess_database_url, monkeypatch):
    from lorafleet.gateway.fleet import holding

    # One NOTIFY when the first request is held; the repeat (for a missed NOTIFY) is out of this test's reach.
    monkeypatch.setattr(holding, "WAKE_REPEAT_SECONDS", 3600.0)
    listener = await asyncpg.connect(inprocess_database_url)
    heard: list[str] = []
    await listener.add_listener("lorafleet_wake", lambda _c, _p, _ch, payload: heard.append(payload))
    try:
        gateway = await start_gateway(WAKE_TIMEOUT_SECONDS="60")
        model = sleeping_model
        held = [asyncio.create_task(_post(gateway.url, tenant, _body(model.name, f"w{i}", stream=i % 2 == 1)))
                for i in range(20)]
        await _held(gateway, model, 20)
        await eventually(lambda: _value(heard.count(model.id)), lambda count: count >= 1, what="a wake NOTIFY")
        assert await db.fetchval("SELECT wake_requested_at IS NOT NULL FROM workers WHERE url = $1", model.worker.url)
        await model.wake(db)
        responses = await asyncio.gather(*held)
        assert [r.status_code for r in responses] == [200] * 20
        assert heard.count(model.id) == 1, f"{heard.count(model.id)} NOTIFYs for 20 held requests"
    finally:
        await listener.close()


async def test_autoscaling_counts_only_live_holds_within_the_caps(start_gateway, sleeping_model, db, tenant,
                                                                  other_tenant, platform):
    gateway = await start_gateway(WAKE_TIMEOUT_SECONDS="60", HOLD_MAX_REQUESTS="3")
    model = sleeping_model
    staying = [asyncio.create_task(_post(gateway.url, tenant, _body(model.name, f"s{i}"))) for i in range(2)]
    leaving = asyncio.create_task(_post(gateway.url, other_tenant, _body(model.name, "leaving")))
    await _held(gateway, model, 3)
    refused = await asyncio.gather(*(_post(gateway.url, other_tenant, _body(model.name, f"r{i}")) for i in range(5)))
    assert {r.status_code for r in refused} == {503}
    signals = await _signals(gateway.url, model)
    assert signals["held"] == 3, "refused requests are not demand"
    target = gateway.services.settings.autoscale_target_concurrency
    assert signals["desired_replicas"] == max(1, math.ceil(3 / target))

    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await eventually(lambda: _signals(gateway.url, model), lambda s: s["held"] == 2, what="the departed hold gone")
    # Any gateway answers for the fleet: the session's gateway reads the published count.
    await eventually(lambda: _signals(platform.url, model), lambda s: s["held"] == 2,
                     what="the published count on another gateway")

    await model.wake(db)
    assert [r.status_code for r in await asyncio.gather(*staying)] == [200, 200]
    await eventually(lambda: _signals(platform.url, model), lambda s: s["held"] == 0, what="no holds left")
