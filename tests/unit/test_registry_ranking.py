"""Which of a base model's workers the registry offers: routable ones, else quarantined ones, never a
draining or sleeping one (those requests wait for a worker that can take them)."""

from __future__ import annotations

import time

import pytest
from lorafleet.core.errors import ServiceUnavailable
from lorafleet.gateway.fleet.registry import WorkerRegistry, WorkerState


def _registry(*workers: WorkerState) -> WorkerRegistry:
    registry = WorkerRegistry(None, None, "token", 1.0)  # type: ignore[arg-type] - no polling in this test
    registry._workers = {worker.url: worker for worker in workers}  # noqa: SLF001
    return registry


def test_a_quarantined_worker_is_tried_when_nothing_else_is_left_but_a_draining_one_never():
    quarantined = WorkerState("http://q", "bm", "m", ready=True, quarantined_until=time.monotonic() + 60)
    draining = WorkerState("http://d", "bm", "m", ready=True, state="draining")
    assert _registry(quarantined, draining).ranked("bm", None) == [quarantined]
    with pytest.raises(ServiceUnavailable):
        _registry(draining, WorkerState("http://a", "bm", "m", ready=True, state="waking")).ranked("bm", None)
    healthy = WorkerState("http://h", "bm", "m", ready=True)
    assert _registry(quarantined, draining, healthy).ranked("bm", None) == [healthy]
