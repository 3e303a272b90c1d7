"""A busy worker is not a dead one: state polls answered later than the poll timeout (an engine using every
core) keep the workers in routing, and requests go on being served — no 503, no hold, no ``worker_unready``.
A worker whose polls go unanswered for longer than the silence setting does leave routing.
"""

from __future__ import annotations

import aiohttp
import httpx
from lorafleet.gateway.fleet.registry import POLL_TIMEOUT_SECONDS, WorkerRegistry
from structlog.testing import capture_logs

from tests.inprocess.conftest import STUB_MODEL

SLOW_STATE_SECONDS = POLL_TIMEOUT_SECONDS + 0.5  # every poll times out
LATE_POLLS = 3                                   # per worker, while requests keep coming


async def test_workers_whose_state_answers_come_late_stay_in_routing_and_serve(platform, tenant):
    registry = platform.app.state.services.registry
    assert all(worker.ready for worker in registry.workers())
    polls = [worker.behaviour.state_polls for worker in platform.workers]
    for worker in platform.workers:
        worker.behaviour.state_delay_seconds = SLOW_STATE_SECONDS
    statuses, unready_seen, held_seen = [], 0, 0
    with capture_logs() as logs:
        async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
            while any(worker.behaviour.state_polls < before + LATE_POLLS
                      for worker, before in zip(platform.workers, polls, strict=True)):
                response = await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "hi",
                                                                    "max_tokens": 4})
                statuses.append(response.status_code)
                unready_seen += sum(not worker.ready for worker in registry.workers())
                held_seen += sum(platform.app.state.services.holds.by_model.values())
    assert len(statuses) > LATE_POLLS and set(statuses) == {200}, statuses
    assert unready_seen == 0 and held_seen == 0, "no worker left routing, no request was held"
    events = [entry["event"] for entry in logs]
    assert "worker_unready" not in events and "worker_ready" not in events, "no flapping"
    assert "worker_poll_late" in events, "the polls did time out"


async def test_a_worker_silent_for_longer_than_the_silence_setting_leaves_routing(platform, db):
    slow, fine = platform.workers
    async with aiohttp.ClientSession() as http:
        registry = WorkerRegistry(db, http, platform.internal_token, refresh_seconds=60, silence_seconds=1.0)
        await registry.refresh()
        assert {worker.url for worker in registry.workers() if worker.ready} >= {slow.url, fine.url}
        slow.behaviour.state_delay_seconds = SLOW_STATE_SECONDS
        with capture_logs() as logs:
            await registry.refresh()  # a poll that times out after POLL_TIMEOUT_SECONDS > the 1 s allowed
    states = {worker.url: worker.ready for worker in registry.workers()}
    assert (states[slow.url], states[fine.url]) == (False, True)
    (line,) = [entry for entry in logs if entry["event"] == "worker_unready"]
    assert line["reason"] == "silent"
