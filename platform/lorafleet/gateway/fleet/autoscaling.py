"""Per base model: what the fleet is doing, and how many workers it should have (for KEDA or an HPA).

    demand           = running + waiting (as the workers report them) + held (requests the gateways
                       hold for a worker that is asleep, waking, or not there at all)
    desired_replicas = 0                                   if nothing was asked of the model for
                                                           autoscale_idle_seconds (nothing running,
                                                           waiting or held, every worker idle that long)
                       max(1, ceil(demand / autoscale_target_concurrency))   otherwise

Any gateway answers for the whole fleet: workers report their own engine's numbers to every
gateway, and held requests are published in the database by the gateway that holds them, so an
autoscaler may ask whichever gateway its Service routes it to. Held requests are only live ones,
within each gateway's hold caps (holding.py): refused requests and clients that left count for nothing,
so holds cannot ask for more replicas than the caps allow. ``tokens_per_second`` is this
gateway's own (output tokens in the last minute), an indication rather than a fleet total.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque

import asyncpg
import msgspec
from lorafleet.db import queries
from lorafleet.gateway.fleet.catalog import ModelCatalog
from lorafleet.gateway.fleet.holding import HeldRequests
from lorafleet.gateway.fleet.registry import WorkerRegistry

RATE_WINDOW_SECONDS = 60.0


class ModelSignals(msgspec.Struct, kw_only=True):
    base_model: str
    desired_replicas: int
    ready_workers: int
    asleep_workers: int
    waiting: int
    running: int
    held: int
    kv_cache_usage: float       # mean over ready workers, 0..1
    adapters_resident: int      # in the engines' slots and CPU LRUs, over all workers
    tokens_per_second: float
    object: str = "model_signals"


class SignalsList(msgspec.Struct, kw_only=True):
    data: list[ModelSignals]
    object: str = "list"


class TokenRate:
    """Output tokens per base model over the last minute, as this gateway metered them."""

    def __init__(self) -> None:
        self._events: defaultdict[str, deque[tuple[float, int]]] = defaultdict(deque)

    def record(self, base_model_id: str, tokens: int) -> None:
        if tokens:
            self._events[base_model_id].append((time.monotonic(), tokens))

    def per_second(self, base_model_id: str) -> float:
        events = self._events.get(base_model_id)
        if not events:
            return 0.0
        horizon = time.monotonic() - RATE_WINDOW_SECONDS
        while events and events[0][0] < horizon:
            events.popleft()
        return sum(tokens for _, tokens in events) / RATE_WINDOW_SECONDS


async def model_signals(pool: asyncpg.Pool, catalog: ModelCatalog, registry: WorkerRegistry, rate: TokenRate,
                        holds: HeldRequests, *, target_concurrency: int, idle_seconds: float,
                        gateway_dead_after: float) -> list[ModelSignals]:
    held = {row["base_model_id"]: row["held"] for row in await pool.fetch(queries.fleet_held, gateway_dead_after)}
    signals = []
    workers = registry.workers()
    for model in sorted(catalog.all(), key=lambda m: m.name):
        mine = [w for w in workers if w.base_model_id == model.id]
        ready = [w for w in mine if w.ready and w.state == "ready"]
        running = sum(w.running for w in ready)
        waiting = sum(w.waiting for w in ready)
        # This gateway's own count is current; the published one (its own included) may lag by a write.
        holding = max(held.get(model.id, 0), holds.by_model.get(model.id, 0))
        demand = running + waiting + holding
        recently_busy = any(w.idle_seconds < idle_seconds for w in ready)
        desired = max(1, math.ceil(demand / target_concurrency)) if demand or recently_busy else 0
        signals.append(ModelSignals(
            base_model=model.name, desired_replicas=desired, ready_workers=len(ready),
            asleep_workers=sum(w.state == "asleep" for w in mine), waiting=waiting, running=running, held=holding,
            kv_cache_usage=round(sum(w.kv_cache_usage for w in ready) / len(ready), 4) if ready else 0.0,
            adapters_resident=sum(w.resident_adapters for w in mine),
            tokens_per_second=round(rate.per_second(model.id), 3),
        ))
    return signals
