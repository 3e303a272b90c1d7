"""Which of a base model's ready workers takes a request.

Base-model requests go to the least busy worker. An adapter request prefers the worker that
rendezvous hashing (highest random weight) ranks first for that adapter, so each adapter stays
warm on one worker as the fleet grows and shrinks (adding or removing a worker moves only the
adapters that rank it first). When the preferred worker is busier than the least busy one by
more than ``spill_margin`` requests, the request spills to the next in rank order that is not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol


class Candidate(Protocol):
    url: str
    in_flight: int


def rendezvous_rank(key: str, candidates: Sequence[Candidate]) -> list[Candidate]:
    def weight(candidate: Candidate) -> bytes:
        return hashlib.blake2b(f"{key}|{candidate.url}".encode(), digest_size=8).digest()

    return sorted(candidates, key=weight, reverse=True)


def choose(candidates: Sequence[Candidate], adapter_id: str | None, spill_margin: int = 8) -> Candidate:
    least_busy = min(candidates, key=lambda candidate: candidate.in_flight)
    if adapter_id is None:
        return least_busy
    for candidate in rendezvous_rank(adapter_id, candidates):
        if candidate.in_flight - least_busy.in_flight <= spill_margin:
            return candidate
    return least_busy
