"""The relay against stub workers: usage shapes of a stream, retries only of what no worker took, failures after
a worker took a request (never resent), idle timeouts, clients that leave.

Every case checks the one ledger row the request leaves.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from lorafleet.db import queries
from structlog.testing import capture_logs

from tests.helpers import eventually, ledger_row, wait_rows
from tests.inprocess.conftest import IDLE_TIMEOUT_SECONDS, STUB_MODEL

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


async def test_a_5xx_from_a_worker_that_took_the_request_is_tried_once_and_billed_once(platform, tenant, db):
    for worker in platform.workers:
        worker.behaviour.fail_next = 1  # whichever is tried first fails; the other would succeed
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        response = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4})
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("worker_failed", "server_error")
    assert "Traceback" not in response.text and "http://" not in error["message"]
    assert response.headers["x-should-retry"] == "false", "the SDKs must not resend it either"
    assert sum(len(worker.behaviour.received) for worker in platform.workers) == 1, "never sent to the next worker"
    row = await ledger_row(db, response.headers["x-request-id"])
    assert (row["outcome"], row["http_status"], row["completion_tokens"]) == ("upstream_error", 502, 0)
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id) == 1


async def test_a_worker_that_keeps_failing_leaves_routing_after_a_few_requests(platform, tenant, db):
    from lorafleet.gateway.fleet.registry import FAILURES_BEFORE_UNREADY

    broken, healthy = platform.workers
    broken.behaviour.fail_next = 1000
    statuses = []
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        for _ in range(12):
            response = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4})
            statuses.append(response.status_code)
    assert len(broken.behaviour.received) <= FAILURES_BEFORE_UNREADY, "taken out of routing after a few failures"
    assert statuses.count(502) == len(broken.behaviour.received), "each request it took failed, none was resent"
    assert statuses.count(200) == len(healthy.behaviour.received) == 12 - statuses.count(502)


async def test_an_adapter_one_worker_cannot_fetch_goes_to_another_and_costs_that_worker_nothing(platform, tenant, db):
    from lorafleet.core.errors import ADAPTER_UNAVAILABLE_STATUS
    from lorafleet.gateway.fleet.registry import FAILURES_BEFORE_UNREADY

    cannot, can = platform.workers
    cannot.behaviour.fail_next, cannot.behaviour.fail_status = 1000, ADAPTER_UNAVAILABLE_STATUS
    sent = 0
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        # Placement decides which worker is tried first (load ties move with timing): send until the one
        # that cannot fetch has answered 424 more often than would take a failing worker out of routing.
        while len(cannot.behaviour.received) <= FAILURES_BEFORE_UNREADY + 2 and sent < 60:
            response = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4})
            sent += 1
            assert response.status_code == 200, response.text
        workers = (await http.get("/admin/workers", headers=platform.admin_headers)).json()["data"]
    assert len(cannot.behaviour.received) > FAILURES_BEFORE_UNREADY + 2, "the worker that cannot fetch was tried"
    assert not any(worker["quarantined"] for worker in workers), "a worker is not failing when one adapter is"
    assert len(can.behaviour.received) == sent, "every request was answered by the worker that can"


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


async def test_a_worker_that_drops_a_request_it_read_is_not_sent_it_again(platform, tenant, db):
    for worker in platform.workers:
        worker.behaviour.drop_next = 1  # reads the whole request, then the connection is gone: as a worker dying of it
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        response = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4})
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "worker_failed"
    assert sum(len(worker.behaviour.received) for worker in platform.workers) == 1
    row = await ledger_row(db, response.headers["x-request-id"])
    assert (row["outcome"], row["http_status"]) == ("upstream_error", 502)


async def test_a_worker_that_refuses_connections_is_replaced_by_the_next(platform, tenant, db, monkeypatch, spare_stub):
    """The registry still thinks a worker is ready (its view is frozen here), but its port refuses connections:
    nothing reached it, so the request goes to the next worker."""
    registry = platform.app.state.services.registry
    gone = spare_stub
    await db.execute(queries.upsert_worker, gone.url, platform.base_model_id, "ready")
    held: list = []
    try:
        await eventually(lambda: _ready(registry, gone.url), bool, what="the new worker in routing")
        monkeypatch.setattr(registry, "_poll", _no_poll)  # the view stays what it was: the worker "ready"
        # The registry refreshes in one loop, one refresh after another: once a refresh that began after
        # the patch has ended, none that polls is left running.
        refreshed, refresh = asyncio.Event(), registry.refresh

        async def refresh_then_say_so() -> None:
            await refresh()
            refreshed.set()

        monkeypatch.setattr(registry, "refresh", refresh_then_say_so)
        await refreshed.wait()
        await gone.runner.cleanup()  # its port now refuses connections
        # The others look busy, so the refusing worker is placement's first choice.
        held = [worker.take(None) for worker in registry.workers() if worker.url != gone.url]
        with capture_logs() as logs:
            async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
                response = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi",
                                                                    "max_tokens": 4})
    finally:
        for release in held:
            release()
        monkeypatch.undo()
        await db.execute(queries.delete_worker, gone.url)
    assert response.status_code == 200, response.text
    assert sum(len(worker.behaviour.received) for worker in platform.workers) == 1
    row = await ledger_row(db, response.headers["x-request-id"])
    assert row["outcome"] == "success" and row["worker_url"] != gone.url
    (line,) = [entry for entry in logs if entry["event"] == "request"]
    assert line["attempts"] == 2, "the refusing worker was tried first"
    assert [entry["event"] for entry in logs if entry["event"].startswith("upstream_")] == ["upstream_connect_failed"]


async def _ready(registry, url: str) -> bool:
    return any(worker.url == url and worker.routable for worker in registry.workers())


async def _no_poll(_worker) -> None:
    return None


async def test_a_slow_but_steady_stream_outlives_the_idle_timeout(platform, tenant, db):
    gap = IDLE_TIMEOUT_SECONDS / 3
    for worker in platform.workers:
        worker.behaviour.delay_seconds = gap  # 9 gaps: the stream lasts three idle timeouts
    request_id, events, status = await _stream(platform, tenant, {"stream_options": {"include_usage": True}})
    assert status == 200 and events[-1] == "[DONE]"
    assert len([event for event in events if isinstance(event, dict) and event.get("choices")]) == 8
    row = await ledger_row(db, request_id)
    assert (row["outcome"], row["completion_tokens"]) == ("success", 8)
    assert row["duration_ms"] > 2 * IDLE_TIMEOUT_SECONDS * 1000, "longer than the timeout: only silence counts"


async def test_a_worker_silent_past_the_idle_timeout_fails_the_stream_once(platform, tenant, db):
    for worker in platform.workers:
        worker.behaviour.delay_seconds = IDLE_TIMEOUT_SECONDS * 2  # silent before its first byte
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        response = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "stream": True})
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "worker_failed"
    assert sum(len(worker.behaviour.received) for worker in platform.workers) == 1, "a timeout is never resent"
    row = await ledger_row(db, response.headers["x-request-id"])
    assert (row["outcome"], row["http_status"]) == ("upstream_error", 502)


async def test_a_non_streamed_request_waits_for_its_worker_however_long_it_generates(platform, tenant, db):
    for worker in platform.workers:
        worker.behaviour.delay_seconds = IDLE_TIMEOUT_SECONDS * 2  # nothing on the wire until done, like vLLM
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        response = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4})
    assert response.status_code == 200, response.text
    assert sum(len(worker.behaviour.received) for worker in platform.workers) == 1
    assert (await ledger_row(db, response.headers["x-request-id"]))["outcome"] == "success"


async def test_a_client_leaving_a_non_streamed_request_aborts_it_upstream(platform, tenant, db):
    for worker in platform.workers:
        worker.behaviour.delay_seconds = 3.0
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4})
    await eventually(lambda: _aborted(platform), lambda aborted: aborted == 1, what="the worker's request aborted")
    await wait_rows(db, tenant.tenant_id, 1)
    row = await db.fetchrow("SELECT * FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id)
    assert (row["outcome"], row["http_status"]) == ("client_disconnect", 499)


async def _aborted(platform) -> int:
    return sum(worker.behaviour.aborted for worker in platform.workers)


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
