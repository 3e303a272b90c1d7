"""The fleet as an operator reads it: each worker's state, load and resident adapters (slots / CPU / disk).

One view for the admin API (``GET /admin/workers``), the operator dashboard and ``lorafleet workers
list``, built from a registry's last poll, with adapter ids named ``name (tenant)``.
"""

from __future__ import annotations

import msgspec
from lorafleet.adapters.service import AdapterService
from lorafleet.gateway.fleet.registry import WorkerState


class ResidentAdapters(msgspec.Struct, kw_only=True):
    slots: list[str]        # in the engine's LoRA slots
    cpu: list[str]          # in the engine's CPU LRU
    disk: list[str]         # in the worker's disk cache
    pinned: list[str]       # pinned by the operator (never evicted)


class WorkerView(msgspec.Struct, kw_only=True):
    id: str
    url: str
    base_model: str
    state: str              # ready | draining | asleep | waking
    ready: bool             # answering its polls
    quarantined: bool       # left out of routing for a few seconds after consecutive failed requests
    in_flight: int          # requests this gateway has on it
    running: int
    waiting: int
    kv_cache_usage: float
    max_loras: int
    adapters: ResidentAdapters
    object: str = "worker"


class WorkerList(msgspec.Struct, kw_only=True):
    data: list[WorkerView]
    object: str = "list"


async def worker_views(workers: list[WorkerState], adapters: AdapterService) -> WorkerList:
    every = sorted({a for w in workers for a in w.slots | w.cpu | w.disk | w.pinned})
    labels = await adapters.labels(every) if every else {}

    def named(ids: frozenset[str]) -> list[str]:
        return sorted(labels.get(adapter, adapter) for adapter in ids)

    return WorkerList(data=[
        WorkerView(id=w.id, url=w.url, base_model=w.base_model_name, state=w.state, ready=w.ready,
                   quarantined=w.quarantined,
                   in_flight=w.in_flight, running=w.running, waiting=w.waiting, kv_cache_usage=w.kv_cache_usage,
                   max_loras=w.max_loras,
                   adapters=ResidentAdapters(slots=named(w.slots), cpu=named(w.cpu - w.slots), disk=named(w.disk),
                                             pinned=named(w.pinned)))
        for w in sorted(workers, key=lambda w: (w.base_model_name, w.url))
    ])


async def list_workers(settings) -> WorkerList:
    """Poll every registered worker once (the CLI's view): the same registry and views as a gateway."""
    import aiohttp
    from lorafleet.adapters.blobstore import make_blob_store
    from lorafleet.db import create_pool
    from lorafleet.gateway.fleet.registry import WorkerRegistry

    pool = await create_pool(settings.database_url, max_size=2)
    try:
        async with aiohttp.ClientSession() as http:
            registry = WorkerRegistry(pool, http, settings.internal_token, settings.worker_refresh_seconds)
            await registry.refresh()
            return await worker_views(registry.workers(), AdapterService(pool, make_blob_store(settings)))
    finally:
        await pool.close()
