"""The batch dispatcher's headroom rule, on worker states as the registry holds them (no database, no engine):
lines per ready worker, a trickle while interactive requests run, none to a worker with a queue or a full
KV cache, one line to wake a model with no ready worker."""

from __future__ import annotations

import time

from lorafleet.core.settings import GatewaySettings, load_settings
from lorafleet.gateway.batches.dispatcher import INTERACTIVE_MEMORY_SECONDS, BatchDispatcher
from lorafleet.gateway.fleet.registry import WorkerState

MODEL = "bm_x"


class Registry:
    def __init__(self, workers: list[WorkerState]) -> None:
        self._workers = workers

    def workers(self) -> list[WorkerState]:
        return self._workers


def _dispatcher(workers: list[WorkerState], **settings: str) -> BatchDispatcher:
    env = {"LORAFLEET_DATABASE_URL": "postgresql://unused/unused", **{f"LORAFLEET_{k}": v for k, v in settings.items()}}
    return BatchDispatcher(None, None, None, None, Registry(workers), None,  # type: ignore[arg-type]
                           load_settings(GatewaySettings, env), "gw_test", None)  # type: ignore[arg-type]


def _worker(url: str, **state: object) -> WorkerState:
    worker = WorkerState(url=url, base_model_id=MODEL, base_model_name="m", ready=True)
    for name, value in state.items():
        setattr(worker, name, value)
    return worker


def test_each_ready_worker_takes_its_lines_less_those_running():
    workers = [_worker("http://a"), _worker("http://b")]
    dispatcher = _dispatcher(workers, BATCH_LINES_PER_WORKER="4")
    assert dispatcher.headroom(MODEL) == 8
    dispatcher._in_flight[MODEL] = 3
    for worker in workers:  # our own lines are in the workers' in-flight counts: not interactive traffic
        worker.in_flight = 1
    workers[0].in_flight = 2
    assert dispatcher.headroom(MODEL) == 5


def test_a_worker_with_a_queue_or_a_full_cache_or_not_routable_gets_none():
    workers = [_worker("http://a", waiting=1), _worker("http://b", kv_cache_usage=0.95),
               _worker("http://c", state="draining"), _worker("http://d")]
    assert _dispatcher(workers, BATCH_LINES_PER_WORKER="4").headroom(MODEL) == 4


def test_interactive_requests_leave_a_trickle_and_are_remembered_for_a_moment():
    workers = [_worker("http://a"), _worker("http://b")]
    dispatcher = _dispatcher(workers, BATCH_LINES_PER_WORKER="4", BATCH_LINES_PER_WORKER_BUSY="1")
    workers[0].in_flight = 1  # one interactive request, no batch line of ours
    assert dispatcher.headroom(MODEL) == 2
    workers[0].in_flight = 0  # it ended a moment ago: still a trickle
    assert dispatcher.headroom(MODEL) == 2
    dispatcher._interactive_until[MODEL] = time.monotonic() - INTERACTIVE_MEMORY_SECONDS
    assert dispatcher.headroom(MODEL) == 8


def test_a_model_with_no_ready_worker_gets_one_line_to_wake_it():
    dispatcher = _dispatcher([_worker("http://a", ready=False)])
    assert dispatcher.headroom(MODEL) == 1
    dispatcher._in_flight[MODEL] = 1
    assert dispatcher.headroom(MODEL) == 0
    assert _dispatcher([]).headroom("bm_other") == 1
