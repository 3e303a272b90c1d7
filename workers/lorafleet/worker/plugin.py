"""vLLM general plugin: LoraFleet's LoRA resolver, the engine-side residency RPCs, the CPU LoRA fix.

Registered through the ``vllm.general_plugins`` entry point, so vLLM loads it in each of its
processes. Inside a LoraFleet worker (``LORAFLEET_WORKER=1``) the API server process resolves
``adp_…`` names: the adapter's row from PostgreSQL (ready only, this base model only), its files
through the local disk cache (fetched from the blob store, sha256 checked), and a LoRARequest with
the database's stable integer id. One lock per adapter id: concurrent first requests for a cold
adapter cause one fetch. In the engine's worker processes it installs the methods the worker's
``/lorafleet/state`` route reads slots and the CPU LRU with (``collective_rpc``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from typing import Any

import structlog

log = structlog.get_logger("lorafleet.resolver")


def register() -> None:
    # The entry point loads this in every vLLM process on a machine with the package installed:
    # patch and register only inside a LoraFleet worker's engine (engine.py sets the variable).
    if os.environ.get("LORAFLEET_WORKER") != "1":
        return
    from lorafleet.worker import cpu_lora_fix

    if not cpu_lora_fix.install():
        log.error("cpu_lora_fix_not_installed", reason="vLLM's CPU LoRA ops are not the shape this fix knows")
    _install_residency_rpcs()
    from lorafleet.core.settings import WorkerSettings, get_settings
    from vllm.lora.resolver import LoRAResolverRegistry

    if "lorafleet" not in LoRAResolverRegistry.get_supported_resolvers():
        LoRAResolverRegistry.register_resolver("lorafleet", LoraFleetResolver(get_settings(WorkerSettings)))


def _adapter_manager(worker: Any) -> Any | None:
    manager = getattr(getattr(worker, "model_runner", None), "lora_manager", None)
    return getattr(manager, "_adapter_manager", None)


def lora_residency(worker: Any) -> dict[str, list[int]]:
    """Engine-side: lora int ids in the compute slots, the CPU LRU, and pinned there."""
    manager = _adapter_manager(worker)
    if manager is None:
        return {"slots": [], "cpu": [], "pinned": []}
    return {"slots": list(manager._active_adapters.keys()),  # noqa: SLF001 - vLLM exposes no accessor (vllm#45325)
            "cpu": list(manager._registered_adapters.keys()),  # noqa: SLF001
            "pinned": sorted(manager._registered_adapters.pinned_items)}  # noqa: SLF001


def pin_lora(worker: Any, lora_int_id: int, pinned: bool) -> bool:
    """Engine-side: keep an adapter in the CPU LRU (or let it go again); never holds a compute slot."""
    manager = _adapter_manager(worker)
    if manager is None or lora_int_id not in manager._registered_adapters:  # noqa: SLF001
        return False
    cache = manager._registered_adapters  # noqa: SLF001
    if pinned:
        cache.pin(lora_int_id)
    elif lora_int_id in cache.pinned_items:
        cache._unpin(lora_int_id)  # noqa: SLF001
    return True


def _install_residency_rpcs() -> None:
    try:
        from vllm.v1.worker.worker_base import WorkerBase
    except ImportError:
        return
    WorkerBase.lorafleet_lora_residency = lora_residency
    WorkerBase.lorafleet_pin_lora = pin_lora


def adapter_unavailable(adapter_id: str) -> Exception:
    """What a request for an adapter this worker cannot fetch gets: 424, which the gateway reads as
    "try another worker, and do not count it against this one" (a 5xx would quarantine the worker
    for everybody because one adapter's bytes are unreachable)."""
    from http import HTTPStatus

    from lorafleet.core.errors import ADAPTER_UNAVAILABLE_STATUS
    from vllm.exceptions import GracefulHTTPError

    return GracefulHTTPError(f"The weights of {adapter_id} could not be fetched to this worker.",
                             HTTPStatus(ADAPTER_UNAVAILABLE_STATUS))


def _resolver_base():
    from vllm.lora.resolver import LoRAResolver

    return LoRAResolver


class LoraFleetResolver(_resolver_base()):  # type: ignore[misc]
    def __init__(self, settings) -> None:
        from lorafleet.adapters.blobstore import make_blob_store
        from lorafleet.worker.adapter_cache import AdapterDiskCache
        from lorafleet.worker.metrics import AdapterMetrics

        self.settings = settings
        self.cache = AdapterDiskCache(settings.resolved_adapter_cache_dir, settings.adapter_cache_bytes,
                                      make_blob_store(settings))
        self.metrics = AdapterMetrics()
        self.pinned: set[str] = set()  # never evicted from the disk cache (operator pins)
        self._state: Any = None        # vLLM's app state, once the API server has built it
        self._pool = None
        self._pool_lock = asyncio.Lock()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Names being resolved right now hold vLLM's per-name lock; evicting one of them would
        # wait on that lock while it may wait on ours: never pick them as victims.
        self._resolving: set[str] = set()
        self._evicting = asyncio.Lock()  # one eviction pass at a time

    def attach(self, state: Any) -> None:
        """The API server's state (engine client, served names): eviction unloads in-process."""
        self._state = state

    async def _db(self):
        async with self._pool_lock:
            if self._pool is None:
                from lorafleet.db import create_pool

                self._pool = await create_pool(self.settings.database_url, max_size=2)
        return self._pool

    async def resolve_lora(self, base_model_name: str, lora_name: str):
        if not lora_name.startswith("adp_"):
            return None
        self._resolving.add(lora_name)
        try:
            return await self._resolve(lora_name)
        finally:
            self._resolving.discard(lora_name)

    async def prefetch(self, lora_name: str) -> str | None:
        """Fetch an adapter into the disk cache without loading it; its folder, or None if unknown."""
        self._resolving.add(lora_name)
        try:
            fetched = await self._fetch(lora_name)
            return None if fetched is None else str(fetched[0])
        finally:
            self._resolving.discard(lora_name)

    async def _fetch(self, lora_name: str) -> tuple[Any, int] | None:
        """(folder, lora int id) with the files on local disk, or None if not servable here."""
        from lorafleet.core.errors import BlobStoreUnavailable
        from lorafleet.db import queries
        from lorafleet.worker.adapter_cache import AdapterIntegrityError

        async with self._locks[lora_name]:
            started = time.perf_counter()
            row = await (await self._db()).fetchrow(queries.adapter_for_worker, lora_name)
            if row is None or row["base_model"] != self.settings.model_name:
                return None  # deleted, unknown, or for another base model: vLLM answers 404
            try:
                folder, cached = await asyncio.to_thread(self.cache.ensure, row["id"], row["sha256"], row["config"])
            except (BlobStoreUnavailable, AdapterIntegrityError, OSError) as exc:
                # This adapter cannot reach this engine now; the worker itself is fine (see adapter_unavailable).
                log.error("adapter_fetch_failed", adapter=lora_name, error=repr(exc)[:300])
                self.metrics.fetch_failures.inc()
                raise adapter_unavailable(lora_name) from None
            async with self._evicting:
                for victim in await asyncio.to_thread(self.cache.over_budget,
                                                      self._resolving | self.pinned | {lora_name}):
                    await self._unload(victim)
                    await asyncio.to_thread(self.cache.remove, victim)
                    self.metrics.evictions.inc()
                on_disk = await asyncio.to_thread(self.cache.usage)
            source = "disk_cache" if cached else "blob_store"
            elapsed = time.perf_counter() - started
            self.metrics.resolutions.labels(source).inc()
            self.metrics.resolve_seconds.labels(source).observe(elapsed)
            self.metrics.disk_adapters.set(on_disk[0])
            self.metrics.disk_bytes.set(on_disk[1])
            log.info("adapter_resolved", adapter=lora_name, source=source, ms=round(elapsed * 1000, 1))
            return folder, int(row["lora_int_id"])

    async def _resolve(self, lora_name: str):
        from vllm.lora.request import LoRARequest

        fetched = await self._fetch(lora_name)
        if fetched is None:
            return None
        folder, lora_int_id = fetched
        # vLLM replaces lora_int_id with its own counter when it loads a resolved adapter; ours is
        # the database's stable id, which is what any other loading path sees.
        return LoRARequest(lora_name=lora_name, lora_int_id=lora_int_id, lora_path=str(folder))

    async def _unload(self, adapter_id: str) -> None:
        """Drop an adapter from this engine before its files go (in-process, no HTTP)."""
        if self._state is None:
            return
        from lorafleet.worker.endpoints import forget_adapter

        await forget_adapter(self._state, adapter_id)
