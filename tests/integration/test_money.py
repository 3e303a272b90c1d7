"""Money through the real gateway, worker and PostgreSQL: prices, budgets, rate limits, usage."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io

import httpx
import openai
import pytest
from lorafleet.billing.pricing import Price, worst_case_cost
from lorafleet.core import ids
from lorafleet.db import queries

from tests.helpers import (
    admin,
    expected_cost,
    half_up,
    ledger_cost,
    missing_capability,
    pico,
    set_price,
    settled,
    wait_rows,
)

PROMPT_PRICE, COMPLETION_PRICE = 1_000_003, 2_000_001  # odd on purpose: no request costs whole micro-dollars


async def _limited_tenant(make_key, db, gateway, base_env, **limits) -> object:
    key = await make_key()
    async with admin(gateway, base_env) as api:
        response = await api.patch(f"/admin/tenants/{key.tenant_id}", json=limits)
    assert response.status_code == 200, response.text
    return key


async def test_cost_is_on_every_response_and_in_the_ledger(gateway, base_env, db, client, model_name, tenant_key):
    price = await set_price(gateway, base_env, model_name, PROMPT_PRICE, COMPLETION_PRICE)
    raw = await client.completions.with_raw_response.create(model=model_name, prompt="The sky is", max_tokens=5)
    completion = raw.parse()
    cost = pico(raw.headers["x-lorafleet-cost-micro-usd"])  # exact: never rounded per request
    assert cost == expected_cost(completion.usage.prompt_tokens, completion.usage.completion_tokens,
                                 PROMPT_PRICE, COMPLETION_PRICE)
    from tests.helpers import ledger_row

    row = await ledger_row(db, raw.headers["x-request-id"])
    assert (row["cost_pico_usd"], row["price_id"]) == (cost, price["id"])

    stream = await client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Count to five"}], max_tokens=6, stream=True,
        stream_options={"include_usage": True})
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
    streamed_cost = pico(usage.model_extra["cost_micro_usd"])
    assert streamed_cost == expected_cost(usage.prompt_tokens, usage.completion_tokens, PROMPT_PRICE, COMPLETION_PRICE)


async def test_fifty_concurrent_requests_at_the_edge_of_a_budget_never_overspend(gateway, base_env, db, model_name,
                                                                                   make_key):
    await set_price(gateway, base_env, model_name, PROMPT_PRICE, COMPLETION_PRICE)
    key = await make_key()
    prompt, max_tokens = "Once upon a time", 8
    # Each request reserves its worst case: the prompt's byte bound + 64 template tokens, and max_tokens.
    price = Price(0, "", PROMPT_PRICE, COMPLETION_PRICE, 0, dt.datetime.now(dt.UTC))
    worst = worst_case_cost(price, len(prompt) + 64, max_tokens, 2048, adapter=False)
    limit = worst * 5 + worst // 2  # room for five reservations at a time, not six
    async with admin(gateway, base_env) as api:
        assert (await api.patch(f"/admin/tenants/{key.tenant_id}",
                                json={"monthly_spend_limit_micro_usd": limit})).status_code == 200
    await asyncio.sleep(1.0)  # key cache: the gateway learns the key is now metered

    async with httpx.AsyncClient(base_url=gateway.url, timeout=120,
                                 headers={"Authorization": f"Bearer {key.secret}"}) as http:
        async def one() -> httpx.Response:
            return await http.post("/v1/completions", json={"model": model_name, "prompt": prompt,
                                                            "max_tokens": max_tokens, "temperature": 0})

        responses = await asyncio.gather(*(one() for _ in range(50)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 402}, statuses
    assert statuses.count(200) >= 5 and statuses.count(402) >= 1, statuses
    refused = next(r for r in responses if r.status_code == 402).json()["error"]
    assert refused["type"] == "insufficient_quota" and refused["code"] == "insufficient_quota"

    account = await settled(db, key.tenant_id)
    assert account["reserved_micro_usd"] == 0 and account["in_flight"] == 0
    assert await db.fetchval("SELECT count(*) FROM reservations WHERE tenant_id = $1", key.tenant_id) == 0
    spent = await ledger_cost(db, key.tenant_id)  # exact, pico-USD
    assert 0 < spent <= limit * 1_000_000
    assert account["period_spent_pico_usd"] == spent == account["spent_total_pico_usd"]
    # what admission compares: the exact spend rounded up, so the limit holds to the last fraction
    assert account["period_spent_micro_usd"] == -(-spent // 1_000_000) == account["spent_total_micro_usd"] <= limit
    billed = [pico(r.headers["x-lorafleet-cost-micro-usd"]) for r in responses if r.status_code == 200]
    assert sum(billed) == spent
    rows = await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", key.tenant_id)
    assert rows == statuses.count(200), "a refused request leaves no ledger row"


async def test_prepaid_tenant_needs_credits(gateway, base_env, db, model_name, make_key):
    await set_price(gateway, base_env, model_name, PROMPT_PRICE, COMPLETION_PRICE)
    key = await make_key()
    async with admin(gateway, base_env) as api:
        assert (await api.patch(f"/admin/tenants/{key.tenant_id}", json={"billing_mode": "prepaid"})).status_code == 200
        await asyncio.sleep(1.0)
        sdk = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key.secret, max_retries=0)
        with pytest.raises(openai.APIStatusError) as refused:
            await sdk.completions.create(model=model_name, prompt="Hi", max_tokens=4)
        assert refused.value.status_code == 402
        grant = await api.post(f"/admin/tenants/{key.tenant_id}/credits",
                               json={"amount_micro_usd": 5_000_000, "reason": "welcome"})
        assert grant.status_code == 201, grant.text
        completion = await sdk.completions.create(model=model_name, prompt="Hi", max_tokens=4)
        assert completion.usage.completion_tokens > 0
        await settled(db, key.tenant_id)
        balance = (await sdk.get("/balance", cast_to=httpx.Response)).json()
        assert balance["credit_granted_micro_usd"] == 5_000_000
        spent = await ledger_cost(db, key.tenant_id)
        assert balance["credit_remaining_pico_usd"] == 5_000_000 * 1_000_000 - spent  # decreased exactly
        assert balance["credit_remaining_micro_usd"] == half_up(5_000_000 * 1_000_000 - spent)
        assert balance["billing_mode"] == "prepaid"
        await sdk.close()


async def test_rate_limits_hold_across_two_gateways(gateway, gateways, base_env, db, model_name, make_key):
    second = gateways.start()
    key = await make_key()
    async with admin(gateway, base_env) as api:
        limits = await api.patch(f"/admin/keys/{key.key_id}", json={"requests_per_minute": 6})
        assert limits.status_code == 200, limits.text
    await asyncio.sleep(1.0)
    responses = []
    for index in range(10):
        target = (gateway, second)[index % 2]
        async with httpx.AsyncClient(base_url=target.url, timeout=60,
                                     headers={"Authorization": f"Bearer {key.secret}"}) as http:
            responses.append(await http.post("/v1/completions", json={"model": model_name, "prompt": "Hi",
                                                                      "max_tokens": 1}))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 6 and statuses.count(429) == 4, statuses
    limited = next(r for r in responses if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-ratelimit-limit-requests"] == "6"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    admitted = next(r for r in responses if r.status_code == 200)
    assert admitted.headers["x-ratelimit-limit-requests"] == "6"

    # The official SDK sees a RateLimitError it can back off on.
    sdk = openai.AsyncOpenAI(base_url=second.url + "/v1", api_key=key.secret, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        await sdk.completions.create(model=model_name, prompt="Hi", max_tokens=1)
    await sdk.close()


async def test_tokens_per_minute_and_concurrency_caps(gateway, base_env, db, model_name, make_key):
    key = await make_key()
    async with admin(gateway, base_env) as api:
        assert (await api.patch(f"/admin/keys/{key.key_id}", json={"tokens_per_minute": 500})).status_code == 200
        assert (await api.patch(f"/admin/tenants/{key.tenant_id}",
                                json={"max_concurrent_requests": 2})).status_code == 200
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=120,
                                 headers={"Authorization": f"Bearer {key.secret}"}) as http:
        too_big = await http.post("/v1/completions", json={"model": model_name, "prompt": "Hi", "max_tokens": 1000})
        assert too_big.status_code == 429
        assert too_big.json()["error"]["code"] == "request_too_large_for_rate_limit"
        assert "retry-after" not in too_big.headers  # waiting would not help

        async def one() -> httpx.Response:
            return await http.post("/v1/completions", json={"model": model_name, "prompt": "Hi", "max_tokens": 40,
                                                            "ignore_eos": True})

        responses = await asyncio.gather(*(one() for _ in range(5)))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 429 in statuses, statuses
    capped = [r for r in responses if r.status_code == 429]
    assert {r.json()["error"]["code"] for r in capped} <= {"concurrency_limit_exceeded", "rate_limit_exceeded"}
    assert any(r.json()["error"]["code"] == "concurrency_limit_exceeded" for r in capped)
    account = await settled(db, key.tenant_id)
    assert account["in_flight"] == 0


async def test_admission_commits_without_waiting_for_the_flush_unless_configured(db, make_key):
    """What LORAFLEET_ADMISSION_SYNCHRONOUS_COMMIT chooses: counted in WAL flushes (pg_stat_wal.wal_sync)."""
    if await db.fetchval("SHOW fsync") != "on":
        missing_capability("this PostgreSQL never flushes WAL (fsync=off): the two modes cannot differ")
    key = await make_key()
    await db.execute("UPDATE tenant_accounts SET monthly_spend_limit_micro_usd = 10^12 WHERE tenant_id = $1",
                     key.tenant_id)
    await db.execute("UPDATE api_keys SET requests_per_minute = 100000 WHERE id = $1", key.key_id)
    admissions = 50
    syncs = {}
    async with db.acquire() as connection:
        async def flushed_syncs() -> int:
            await connection.execute("SELECT pg_stat_force_next_flush()")  # this backend's counts, when idle
            await asyncio.sleep(0.05)
            return await connection.fetchval("SELECT wal_sync FROM pg_stat_wal")

        for mode in ("on", "off"):
            before = await flushed_syncs()
            for _ in range(admissions):
                row = await connection.fetchrow(queries.admit_request, ids.request_id(), key.tenant_id, key.key_id,
                                                "gw_commit_test", 1_000, 10, mode)
                assert row["verdict"] == "admitted"
            syncs[mode] = await flushed_syncs() - before
    # Each synchronous admission waits for its own flush; asynchronous ones leave it to the WAL writer.
    assert syncs["on"] >= admissions, syncs
    assert syncs["off"] <= admissions // 5, syncs
    account = await db.fetchrow("SELECT in_flight FROM tenant_accounts WHERE tenant_id = $1", key.tenant_id)
    assert account["in_flight"] == 2 * admissions, "both modes reserve alike"


async def test_usage_api_matches_the_ledger_and_csv_matches_json(gateway, base_env, db, model_name, make_key):
    await set_price(gateway, base_env, model_name, PROMPT_PRICE, COMPLETION_PRICE)
    key, other = await make_key(), await make_key()
    second_key = await make_key(tenant_id=key.tenant_id)
    for secret, count in ((key.secret, 3), (second_key.secret, 2), (other.secret, 1)):
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0) as sdk:
            for _ in range(count):
                await sdk.completions.create(model=model_name, prompt="Hello", max_tokens=3)
    # Neither tenant has a limit, so nothing is reserved: wait for the ledger rows themselves.
    for tenant, count in ((key.tenant_id, 5), (other.tenant_id, 1)):
        await wait_rows(db, tenant, count)

    async with httpx.AsyncClient(base_url=gateway.url, timeout=30,
                                 headers={"Authorization": f"Bearer {key.secret}"}) as http:
        report = (await http.get("/v1/usage", params={"bucket": "hour", "group_by": "key,model"})).json()
        ledger = await db.fetchrow(
            "SELECT count(*) AS requests, sum(prompt_tokens) AS prompt, sum(completion_tokens) AS completion, "
            "sum(cost_pico_usd) AS cost FROM usage_ledger WHERE tenant_id = $1", key.tenant_id)
        assert report["totals"]["requests"] == ledger["requests"] == 5
        assert report["totals"]["prompt_tokens"] == ledger["prompt"]
        assert report["totals"]["completion_tokens"] == ledger["completion"]
        assert report["totals"]["cost_pico_usd"] == ledger["cost"]
        assert report["totals"]["cost_micro_usd"] == half_up(int(ledger["cost"]))  # rounded once, not per row
        assert {row["api_key_id"] for row in report["data"]} == {key.key_id, second_key.key_id}
        assert {row["model"] for row in report["data"]} == {model_name}
        by_key = {row["api_key_id"]: row["requests"] for row in report["data"]}
        assert by_key == {key.key_id: 3, second_key.key_id: 2}

        daily = (await http.get("/v1/usage", params={"bucket": "day"})).json()
        assert daily["totals"] == report["totals"]

        exported = await http.get("/v1/usage", params={"bucket": "hour", "group_by": "key,model", "format": "csv"})
        assert exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert [(r["api_key_id"], int(r["requests"]), int(r["cost_micro_usd"]), int(r["cost_pico_usd"])) for r in rows] == \
               [(r["api_key_id"], r["requests"], r["cost_micro_usd"], r["cost_pico_usd"]) for r in report["data"]]

        filtered = (await http.get("/v1/usage", params={"api_key_id": second_key.key_id})).json()
        assert filtered["totals"]["requests"] == 2

        for params, param in (({"bucket": "week"}, "bucket"), ({"start": "yesterday"}, "start"),
                              ({"group_by": "key,color"}, "group_by"), ({"format": "xml"}, "format"),
                              ({"start": "2026-01-01T00:00:00"}, "start"),
                              ({"start": "2020-01-01T00:00:00Z", "bucket": "hour"}, "start")):
            bad = await http.get("/v1/usage", params=params)
            assert bad.status_code == 400, (params, bad.text)
            assert bad.json()["error"]["param"] == param

    async with httpx.AsyncClient(base_url=gateway.url, timeout=30,
                                 headers={"Authorization": f"Bearer {other.secret}"}) as http:
        theirs = (await http.get("/v1/usage", params={"group_by": "key"})).json()
        assert theirs["totals"]["requests"] == 1
        assert {row["api_key_id"] for row in theirs["data"]} == {other.key_id}


async def test_money_endpoints_refuse_bad_input_and_other_tenants(gateway, base_env, make_key):
    key = await make_key(scopes=["inference"])
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30,
                                 headers={"Authorization": f"Bearer {key.secret}"}) as http:
        for path in ("/v1/usage", "/v1/balance", "/v1/invoices"):
            response = await http.get(path)
            assert response.status_code == 403, path
            assert response.json()["error"]["type"] == "permission_error"
    full = await make_key()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30,
                                 headers={"Authorization": f"Bearer {full.secret}"}) as http:
        missing = await http.get("/v1/invoices/in_doesnotexist")
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "invoice_id"
        assert (await http.get("/admin/tenants")).status_code == 401  # a tenant key is not the admin token
    async with admin(gateway, base_env) as api:
        for method, path, body, param in (
            ("POST", "/admin/prices", {"base_model": "nope", "prompt_micro_usd_per_mtok": 1,
                                       "completion_micro_usd_per_mtok": 1}, "base_model"),
            ("POST", "/admin/prices", {"base_model": "x", "prompt_micro_usd_per_mtok": -1,
                                       "completion_micro_usd_per_mtok": 1}, "prompt_micro_usd_per_mtok"),
            ("PATCH", f"/admin/tenants/{full.tenant_id}", {"billing_mode": "free"}, "billing_mode"),
            ("PATCH", f"/admin/tenants/{full.tenant_id}", {"monthly_spend_limit_micro_usd": "lots"},
             "monthly_spend_limit_micro_usd"),
            ("PATCH", f"/admin/keys/{full.key_id}", {"requests_per_minute": 0}, "requests_per_minute"),
            ("POST", f"/admin/tenants/{full.tenant_id}/credits", {"amount_micro_usd": 1.5}, "amount_micro_usd"),
            ("POST", "/admin/tenants/ten_missing/credits", {"amount_micro_usd": 5}, "tenant"),
        ):
            response = await api.request(method, path, json=body)
            assert 400 <= response.status_code < 500, (path, response.text)
            assert response.json()["error"]["param"] == param, (path, response.text)
    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": "Bearer wrong"}) as http:
        assert (await http.get("/admin/prices")).status_code == 401
