"""A client that hangs up: vLLM stops — mid-stream, or while a non-streamed answer is being generated — and the
ledger records the disconnect (a stream with what the engine streamed)."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from tests.helpers import ledger_row, wait_rows

pytestmark = pytest.mark.engine


async def _engine_metrics(worker) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{worker.url}/metrics", headers=worker.internal_headers)).text
    wanted = {
        "running": r'^vllm:num_requests_running\{[^}]*\} ([0-9.e+]+)$',
        "generated": r'^vllm:generation_tokens_total\{[^}]*\} ([0-9.e+]+)$',
    }
    return {name: float(re.search(pattern, text, re.MULTILINE).group(1)) for name, pattern in wanted.items()}


async def test_disconnect_aborts_generation_and_meters_exactly(gateway, worker, tenant_key, db, model_name):
    before = await _engine_metrics(worker)
    body = {"model": model_name, "prompt": "Tell me a very long story.", "max_tokens": 1500, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    received = 0
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        async with http.stream("POST", "/v1/completions", json=body,
                               headers={"Authorization": f"Bearer {tenant_key.secret}"}) as response:
            request_id = response.headers["x-request-id"]
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    received = max(received, int(re.search(r'"completion_tokens":(\d+)', line).group(1)))
                if received >= 20:
                    break  # leaving the block closes the connection mid-stream
    hung_up = time.monotonic()

    # vLLM stops generating for it: nothing runs soon after, and the token counter stands still
    # (1500 tokens would take the engine well over ten seconds).
    while (now := await _engine_metrics(worker))["running"] != 0:
        assert time.monotonic() - hung_up < 5, f"engine still generating: {now}"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    assert (await _engine_metrics(worker))["generated"] == now["generated"]

    row = await ledger_row(db, request_id)
    assert row["outcome"] == "client_disconnect" and row["streamed"]
    generated_by_engine = now["generated"] - before["generated"]
    # The ledger holds the count of the last chunk the engine streamed to the gateway: at least what
    # the client saw, at most what the engine generated (which may include tokens never sent).
    assert received <= row["completion_tokens"] <= generated_by_engine
    assert row["completion_tokens"] < 1500
    assert row["prompt_tokens"] > 0


async def test_a_client_leaving_a_non_streamed_request_aborts_generation(gateway, worker, make_key, db, model_name):
    """vLLM sends a non-streamed answer only when it is done: the gateway watches the client meanwhile, and
    closing the upstream connection is what makes vLLM abort the request."""
    tenant_key = await make_key()  # its own tenant: the one ledger row below is this request's
    before = await _engine_metrics(worker)
    body = {"model": model_name, "prompt": "Tell me a very long story.", "max_tokens": 1500, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30,
                                 headers={"Authorization": f"Bearer {tenant_key.secret}"}) as http:
        request = asyncio.create_task(http.post("/v1/completions", json=body))
        while (await _engine_metrics(worker))["running"] == 0:  # the engine is generating it
            assert not request.done(), request.result().text
            await asyncio.sleep(0.05)
        request.cancel()  # the client goes away: httpx closes its connection
        with pytest.raises(asyncio.CancelledError):
            await request
    hung_up = time.monotonic()
    while (now := await _engine_metrics(worker))["running"] != 0:
        assert time.monotonic() - hung_up < 5, f"engine still generating: {now}"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    assert (await _engine_metrics(worker))["generated"] == now["generated"]
    assert now["generated"] - before["generated"] < 1500, "aborted, not generated to the end"
    await wait_rows(db, tenant_key.tenant_id, 1)
    row = await db.fetchrow("SELECT * FROM usage_ledger WHERE tenant_id = $1", tenant_key.tenant_id)
    assert (row["outcome"], row["http_status"]) == ("client_disconnect", 499)
