"""The relay against stub workers: usage shapes of a stream, failover before the first byte, failures after it.

Every case checks the one ledger row the request leaves.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers import ledger_row
from tests.inprocess.conftest import STUB_MODEL

PROMPT_TOKENS = 12


async def _stream(platform, tenant, body: dict) -> tuple[str, list[dict | str], int]:
    events: list[dict | str] = []
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http, \
            http.stream("POST", "/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "stream": True, **body}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else json.loads(data))
        return response.headers["x-request-id"], events, response.status_code


@pytest.mark.parametrize(("options", "usage_chunks", "per_chunk"), [
    (None, 0, False),
    ({"include_usage": True}, 1, False),
    ({"include_usage": True, "continuous_usage_stats": True}, 1, True),
])
async def test_a_stream_shows_usage_only_in_the_shape_asked_and_is_metered_exactly(platform, tenant, db, options,
                                                                                 usage_chunks, per_chunk):
    request_id, events, status = await _stream(platform, tenant, {"stream_options": options} if options else {})
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [event for event in events if isinstance(event, dict)]
    content = [chunk for chunk in chunks if chunk["choices"]]
    assert len(content) == 8
    assert len([chunk for chunk in chunks if not chunk["choices"]]) == usage_chunks
    if per_chunk:
        assert [chunk["usage"]["completion_tokens"] for chunk in content] == list(range(1, 9))
    else:
        assert all(chunk.get("usage") is None for chunk in content)
    if usage_chunks:
        final = chunks[-1]["usage"]
        assert (final["prompt_tokens"], final["completion_tokens"]) == (PROMPT_TOKENS, 8)
        assert "cost_micro_usd" in final
    sent = platform.workers[0].behaviour.received + platform.workers[1].behaviour.received
    assert sent[-1]["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}, \
        "upstream always reports usage on every chunk"
    row = await ledger_row(db, request_id)
    assert (row["outcome"], row["prompt_tokens"], row["completion_tokens"]) == ("success", PROMPT_TOKENS, 8)


async def test_a_worker_failing_before_the_first_byte_is_replaced_and_billed_once(platform, tenant, db):
    for worker in platform.workers:
        worker.behaviour.fail_next = 1  # whichever is tried first fails, and the next try succeeds
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        response = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4})
    assert response.status_code == 200, response.text
    assert 2 <= sum(len(worker.behaviour.received) for worker in platform.workers) <= 3
    row = await ledger_row(db, response.headers["x-request-id"])
    assert row["outcome"] == "success" and row["completion_tokens"] == 8
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id) == 1


async def test_a_worker_that_keeps_failing_leaves_routing_and_nobody_notices(platform, tenant, db):
    from lorafleet.gateway.fleet.registry import FAILURES_BEFORE_UNREADY

    broken, healthy = platform.workers
    broken.behaviour.fail_next = 1000
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        for _ in range(12):
            response = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4})
            assert response.status_code == 200, response.text
    assert len(healthy.behaviour.received) == 12
    assert len(broken.behaviour.received) <= FAILURES_BEFORE_UNREADY, "taken out of routing after a few failures"


async def test_an_adapter_one_worker_cannot_fetch_goes_to_another_and_costs_that_worker_nothing(platform, tenant, db):
    from lorafleet.core.errors import ADAPTER_UNAVAILABLE_STATUS
    from lorafleet.gateway.fleet.registry import FAILURES_BEFORE_UNREADY

    cannot, can = platform.workers
    cannot.behaviour.fail_next, cannot.behaviour.fail_status = 1000, ADAPTER_UNAVAILABLE_STATUS
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        for _ in range(FAILURES_BEFORE_UNREADY + 3):
            response = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4})
            assert response.status_code == 200, response.text
        workers = (await http.get("/admin/workers", headers=platform.admin_headers)).json()["data"]
    assert not any(worker["quarantined"] for worker in workers), "a worker is not failing when one adapter is"
    assert len(can.behaviour.received) == FAILURES_BEFORE_UNREADY + 3
    assert len(cannot.behaviour.received) > FAILURES_BEFORE_UNREADY, "it was tried (and answered 424) every time"


async def test_an_adapter_no_worker_can_fetch_is_a_503_that_costs_nothing(platform, tenant, db):
    from lorafleet.core.errors import ADAPTER_UNAVAILABLE_STATUS

    for worker in platform.workers:
        worker.behaviour.fail_next, worker.behaviour.fail_status = 1000, ADAPTER_UNAVAILABLE_STATUS
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        response = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4})
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "adapter_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert [len(worker.behaviour.received) for worker in platform.workers] == [1, 1], "each worker tried once"
    row = await ledger_row(db, response.headers["x-request-id"])
    assert (row["outcome"], row["http_status"], row["cost_pico_usd"]) == ("unavailable", 503, 0)


async def test_a_dropped_connection_is_retried_on_a_fresh_one(platform, tenant, db):
    for worker in platform.workers:
        worker.behaviour.drop_next = 1
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        response = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4})
    assert response.status_code == 200, response.text
    assert (await ledger_row(db, response.headers["x-request-id"]))["outcome"] == "success"


async def test_when_every_try_fails_the_client_gets_a_clean_error_and_one_row(platform, tenant, db):
    for worker in platform.workers:
        worker.behaviour.fail_next = 5
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        response = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_error" and "Traceback" not in response.text
    row = await ledger_row(db, response.headers["x-request-id"])
    assert (row["outcome"], row["http_status"], row["completion_tokens"]) == ("upstream_error", 502, 0)
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE request_id = $1",
                             response.headers["x-request-id"]) == 1


async def test_a_stream_cut_mid_way_ends_with_an_error_event_and_keeps_the_tokens_delivered(platform, tenant, db):
    for worker in platform.workers:
        worker.behaviour.cut_after_chunks = 3
    request_id, events, status = await _stream(platform, tenant, {"stream_options": {"include_usage": True}})
    assert status == 200
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "upstream_error"
    assert len([event for event in events if isinstance(event, dict) and event.get("choices")]) == 3
    row = await ledger_row(db, request_id)
    assert (row["outcome"], row["completion_tokens"]) == ("upstream_error", 3), "billed for what was delivered"
