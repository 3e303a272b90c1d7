"""Training children that take memory instead of training (spawned by the trainer: importable by name)."""

from __future__ import annotations

import time
from typing import Any

from lorafleet.trainer import training


def _growing(spec: Any, on_event: Any, should_stop: Any) -> Any:
    held = []
    for _ in range(64):  # 64 × 64 MiB: far past the test's limit, touched page by page as a real leak would be
        held.append(b"\x01" * (64 << 20))
        time.sleep(0.05)
    raise AssertionError("the watchdog never stopped this child")


def _all_at_once(spec: Any, on_event: Any, should_stop: Any) -> Any:
    held = bytearray(8 << 30)  # one allocation past RLIMIT_AS: refused inside the child
    raise AssertionError(f"{len(held)} bytes were allocated past the address-space limit")


def growing(spec: Any, events: Any, cancel: Any) -> None:
    training._child(spec, events, cancel, work=_growing)


def all_at_once(spec: Any, events: Any, cancel: Any) -> None:
    training._child(spec, events, cancel, work=_all_at_once)
