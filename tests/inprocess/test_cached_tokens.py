"""Cached prompt tokens (issue 24, items 7): what the engine reports as served from its prefix cache is
passed to the client as OpenAI words it, recorded on the ledger and priced at the price version's
cached-prompt price — exactly, in the cost header, the ledger, /v1/usage and the invoice.

The stub worker reports ``usage.prompt_tokens_details.cached_tokens`` as vLLM does with
``--enable-prompt-tokens-details``; the real engine's prefix cache is tested in
tests/integration/test_cached_tokens.py. Expected costs are written out from the documented rule.
"""

from __future__ import annotations

import json

import httpx
import openai

from tests.helpers import admin, close_this_month, eventually, expected_cost, pico, set_price, wait_rows
from tests.inprocess.conftest import STUB_MODEL

PROMPT, CACHED, COMPLETION = 1_000_003, 250_001, 2_000_001  # µUSD per million tokens
CACHED_TOKENS = 8  # of the stub's 12 prompt tokens


def _cached_everywhere(platform, tokens: int | None) -> None:
    for worker in platform.workers:
        worker.behaviour.cached_tokens = tokens


async def _row(db, request_id: str):
    return await eventually(lambda: db.fetchrow("SELECT * FROM usage_ledger WHERE request_id = $1", request_id),
                            lambda row: row is not None, what=f"the ledger row of {request_id}")


async def test_cached_prompt_tokens_are_reported_recorded_and_priced_exactly(platform, db, tenant):
    await set_price(platform, platform.env, STUB_MODEL, PROMPT, COMPLETION, cached_prompt=CACHED)
    _cached_everywhere(platform, CACHED_TOKENS)
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        whole = await http.post("/v1/chat/completions", json={
            "model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert whole.status_code == 200, whole.text
        usage = whole.json()["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == CACHED_TOKENS
        cost = expected_cost(usage["prompt_tokens"], usage["completion_tokens"], PROMPT, COMPLETION,
                             cached_tokens=CACHED_TOKENS, cached_price=CACHED)
        assert cost < expected_cost(usage["prompt_tokens"], usage["completion_tokens"], PROMPT, COMPLETION)
        assert pico(whole.headers["x-lorafleet-cost-micro-usd"]) == cost
        row = await _row(db, whole.headers["x-request-id"])
        assert (row["cached_prompt_tokens"], row["cost_pico_usd"]) == (CACHED_TOKENS, cost)

        async with http.stream("POST", "/v1/chat/completions", json={
                "model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True,
                "stream_options": {"include_usage": True}}) as streamed:
            events = [json.loads(line[6:]) async for line in streamed.aiter_lines()
                      if line.startswith("data: ") and line != "data: [DONE]"]
            request_id = streamed.headers["x-request-id"]
        final = events[-1]["usage"]
        assert final["prompt_tokens_details"]["cached_tokens"] == CACHED_TOKENS
        assert pico(final["cost_micro_usd"]) == expected_cost(
            final["prompt_tokens"], final["completion_tokens"], PROMPT, COMPLETION, cached_tokens=CACHED_TOKENS,
            cached_price=CACHED)
        row = await _row(db, request_id)
        assert row["cached_prompt_tokens"] == CACHED_TOKENS and row["cost_pico_usd"] == pico(final["cost_micro_usd"])

    sdk = openai.AsyncOpenAI(base_url=f"{platform.url}/v1", api_key=tenant.secret)
    try:
        response = await sdk.responses.create(model=STUB_MODEL, input="hi", max_output_tokens=4, store=False)
        assert response.usage.input_tokens_details.cached_tokens == CACHED_TOKENS
        stream = await sdk.responses.create(model=STUB_MODEL, input="hi", max_output_tokens=4, store=False, stream=True)
        ended = [event async for event in stream if event.type in ("response.completed", "response.incomplete")]
        assert ended[0].response.usage.input_tokens_details.cached_tokens == CACHED_TOKENS
    finally:
        await sdk.close()

    # Every row of this tenant, whatever the API: /v1/usage and the invoice sum the ledger's cached tokens.
    await wait_rows(db, tenant.tenant_id, 4)
    ledger = await db.fetchrow("SELECT count(*) AS n, sum(cached_prompt_tokens) AS cached, sum(cost_pico_usd) AS cost "
                               "FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id)
    assert ledger["n"] == 4 and ledger["cached"] == 4 * CACHED_TOKENS
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        report = (await http.get("/v1/usage", params={"bucket": "hour"})).json()
        assert report["totals"]["cached_prompt_tokens"] == ledger["cached"]
        assert report["totals"]["cost_pico_usd"] == int(ledger["cost"])
        csv = (await http.get("/v1/usage", params={"bucket": "hour", "format": "csv"})).text.splitlines()
        header = csv[0].split(",")
        assert sum(int(line.split(",")[header.index("cached_prompt_tokens")]) for line in csv[1:]) == ledger["cached"]
    invoice_id = await close_this_month(db, tenant.tenant_id)
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        invoice = (await http.get(f"/v1/invoices/{invoice_id}")).json()
    usage_lines = [line for line in invoice["lines"] if line["kind"] == "usage"]
    assert sum(line["cached_prompt_tokens"] for line in usage_lines) == ledger["cached"]
    assert all(line["cached_prompt_micro_usd_per_mtok"] == CACHED for line in usage_lines)
    assert all("cached prompt $0.250001/M" in line["description"] for line in usage_lines)


async def test_an_engine_count_beyond_the_prompt_is_clamped_and_no_count_is_no_discount(platform, db, tenant):
    await set_price(platform, platform.env, STUB_MODEL, PROMPT, COMPLETION, cached_prompt=CACHED)
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        _cached_everywhere(platform, 10_000)  # more than the prompt: never priced below zero prompt tokens
        over = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4})
        usage = over.json()["usage"]
        row = await _row(db, over.headers["x-request-id"])
        assert row["cached_prompt_tokens"] == usage["prompt_tokens"]
        assert row["cost_pico_usd"] == expected_cost(usage["prompt_tokens"], usage["completion_tokens"], PROMPT,
                                                     COMPLETION, cached_tokens=usage["prompt_tokens"],
                                                     cached_price=CACHED)
        _cached_everywhere(platform, None)  # an engine that reports nothing: every prompt token at the prompt price
        plain = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4})
        usage = plain.json()["usage"]
        row = await _row(db, plain.headers["x-request-id"])
        assert row["cached_prompt_tokens"] == 0
        assert row["cost_pico_usd"] == expected_cost(usage["prompt_tokens"], usage["completion_tokens"], PROMPT,
                                                     COMPLETION)


async def test_the_cached_price_defaults_to_the_prompt_price_and_never_exceeds_it(platform):
    default = await set_price(platform, platform.env, STUB_MODEL, PROMPT, COMPLETION)
    assert default["cached_prompt_micro_usd_per_mtok"] == PROMPT
    async with admin(platform, platform.env) as api:
        above = await api.post("/admin/prices", json={
            "base_model": STUB_MODEL, "prompt_micro_usd_per_mtok": PROMPT, "completion_micro_usd_per_mtok": COMPLETION,
            "cached_prompt_micro_usd_per_mtok": PROMPT + 1})
        negative = await api.post("/admin/prices", json={
            "base_model": STUB_MODEL, "prompt_micro_usd_per_mtok": PROMPT, "completion_micro_usd_per_mtok": COMPLETION,
            "cached_prompt_micro_usd_per_mtok": -1})
    assert above.status_code == 400 and above.json()["error"]["param"] == "cached_prompt_micro_usd_per_mtok"
    assert negative.status_code == 400 and negative.json()["error"]["param"] == "cached_prompt_micro_usd_per_mtok"
