"""A training child whose steps take at least 0.3 s (spawned: importable by name), so a test can pause
a job between its steps without racing the tiny model's millisecond steps."""

from __future__ import annotations

import time
from typing import Any

from lorafleet.trainer import training


def slow_child(spec: training.JobSpec, events: Any, cancel: Any) -> None:
    def work(spec: training.JobSpec, on_event: Any, should_stop: Any) -> training.TrainResult:
        def slowed(event: dict) -> None:
            on_event(event)
            if event.get("type") == "metrics":
                time.sleep(0.3)
        return training.train(spec, slowed, should_stop)

    training._child(spec, events, cancel, work)
