"""Every micro-dollar (issue 21, finding 6): a thousand one-token requests at a sub-micro-dollar price,
through the real gateway, admission, meter and ledger writer, cost what one request of a thousand
times the tokens costs — in the ledger, /v1/usage, the balance and the closed invoice alike.

Each request costs a fraction of a micro-dollar; rounded row by row (the old rule) they were all
free. Expectations are written out here from the documented rule (billing/pricing.py): a row's cost
is tokens × price in pico-USD exactly; an aggregate is rounded once, half up.
"""

from __future__ import annotations

import asyncio

import httpx
from lorafleet.core.ids import random_token

from tests.helpers import close_this_month, expected_cost, half_up, ledger_cost, pico, set_price, settled
from tests.inprocess.conftest import STUB_MODEL

PROMPT_PRICE = 1            # µUSD per million prompt tokens: one pico-USD per token
COMPLETION_PRICE = 123_457  # µUSD per million completion tokens: 0.123457 µUSD per token
REQUESTS = 1000
CREDIT_MICRO_USD = 1_000_000  # one dollar


async def test_a_thousand_one_token_requests_cost_what_one_thousand_token_request_costs(platform, db, tenant):
    price = await set_price(platform, platform.env, STUB_MODEL, PROMPT_PRICE, COMPLETION_PRICE)
    # Prepaid with a credit: every request is admitted against the credits and settled exactly.
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.admin_headers, timeout=30) as api:
        response = await api.post(f"/admin/tenants/{tenant.tenant_id}/credits",
                                  json={"amount_micro_usd": CREDIT_MICRO_USD, "reason": "test"})
        assert response.status_code == 201, response.text
    await db.execute("UPDATE tenant_accounts SET billing_mode = 'prepaid' WHERE tenant_id = $1", tenant.tenant_id)
    behaviours = [worker.behaviour for worker in platform.workers]
    chunks = [b.chunks for b in behaviours]
    for behaviour in behaviours:
        behaviour.chunks = 1  # one completion token per request
    try:
        async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
            gate = asyncio.Semaphore(16)

            async def one() -> httpx.Response:
                async with gate:
                    return await http.post("/v1/chat/completions", json={
                        "model": STUB_MODEL, "messages": [{"role": "user", "content": random_token(4)}],
                        "max_tokens": 1})

            responses = await asyncio.gather(*(one() for _ in range(REQUESTS)))
    finally:
        for behaviour, count in zip(behaviours, chunks):
            behaviour.chunks = count
    assert [r.status_code for r in responses] == [200] * REQUESTS
    prompt_tokens = responses[0].json()["usage"]["prompt_tokens"]
    assert {(r.json()["usage"]["prompt_tokens"], r.json()["usage"]["completion_tokens"]) for r in responses} == \
        {(prompt_tokens, 1)}

    one_request = expected_cost(prompt_tokens, 1, PROMPT_PRICE, COMPLETION_PRICE)
    big_request = expected_cost(REQUESTS * prompt_tokens, REQUESTS, PROMPT_PRICE, COMPLETION_PRICE)
    assert 0 < one_request < 1_000_000 // 2, "each request costs less than half a micro-dollar"
    assert half_up(big_request) > 100  # what per-row rounding turned into 0

    # Each response says its exact cost; the ledger keeps exactly that.
    assert {r.headers["x-lorafleet-cost-micro-usd"] for r in responses} == {f"0.{one_request:06d}".rstrip("0")}
    assert sum(pico(r.headers["x-lorafleet-cost-micro-usd"]) for r in responses) == big_request
    account = await settled(db, tenant.tenant_id)
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id) == REQUESTS
    assert await db.fetchval("SELECT count(DISTINCT price_id) FROM usage_ledger WHERE tenant_id = $1",
                             tenant.tenant_id) == 1
    assert await ledger_cost(db, tenant.tenant_id) == big_request
    assert int(account["spent_total_pico_usd"]) == int(account["period_spent_pico_usd"]) == big_request
    # admission's whole-micro-dollar counters are the exact amount rounded up: never below what was spent
    assert account["spent_total_micro_usd"] == -(-big_request // 1_000_000)

    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        usage = (await http.get("/v1/usage", params={"bucket": "hour"})).json()
        balance = (await http.get("/v1/balance")).json()
    assert sum(row["requests"] for row in usage["data"]) == REQUESTS
    assert usage["totals"]["cost_pico_usd"] == big_request
    assert usage["totals"]["cost_micro_usd"] == half_up(big_request)
    assert balance["period_spent_pico_usd"] == big_request
    assert balance["period_spent_micro_usd"] == half_up(big_request)
    assert balance["credit_remaining_pico_usd"] == CREDIT_MICRO_USD * 1_000_000 - big_request
    assert balance["credit_remaining_micro_usd"] == half_up(CREDIT_MICRO_USD * 1_000_000 - big_request)

    invoice_id = await close_this_month(db, tenant.tenant_id)
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        invoice = (await http.get(f"/v1/invoices/{invoice_id}")).json()
    usage_lines = [line for line in invoice["lines"] if line["kind"] == "usage"]
    assert [(line["price_id"], line["requests"], line["prompt_tokens"], line["completion_tokens"],
             line["amount_pico_usd"], line["amount_micro_usd"]) for line in usage_lines] == \
        [(price["id"], REQUESTS, REQUESTS * prompt_tokens, REQUESTS, big_request, half_up(big_request))]
    assert invoice["subtotal_micro_usd"] == half_up(big_request) == usage["totals"]["cost_micro_usd"]
    # the credit covers it all
    assert (invoice["credit_applied_micro_usd"], invoice["total_micro_usd"]) == (half_up(big_request), 0)
