"""vLLM general plugin: LoraFleet's LoRA resolver and the CPU LoRA correctness fix.

Registered through the ``vllm.general_plugins`` entry point, so vLLM loads it in each of its
processes. Inside a LoraFleet worker (``LORAFLEET_WORKER=1``) the API server process resolves
``adp_…`` names: the adapter's row from PostgreSQL (ready only, this base model only), its files
through the local disk cache (fetched from the blob store, sha256 checked), and a LoRARequest with
the database's stable integer id. One lock per adapter id: concurrent first requests for a cold
adapter cause one fetch.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict

import structlog

log = structlog.get_logger("lorafleet.resolver")


def register() -> None:
    from lorafleet.worker import cpu_lora_fix

    cpu_lora_fix.install()
    if os.environ.get("LORAFLEET_WORKER") != "1":
        return
    from vllm.lora.resolver import LoRAResolverRegistry

    from lorafleet.core.settings import get_settings

    if "lorafleet" not in LoRAResolverRegistry.get_supported_resolvers():
        LoRAResolverRegistry.register_resolver("lorafleet", LoraFleetResolver(get_settings()))


def _resolver_base():
    from vllm.lora.resolver import LoRAResolver

    return LoRAResolver


class LoraFleetResolver(_resolver_base()):  # type: ignore[misc]
    def __init__(self, settings) -> None:
        from lorafleet.adapters.blobstore import make_blob_store
        from lorafleet.worker.adapter_cache import AdapterDiskCache

        self.settings = settings
        self.cache = AdapterDiskCache(settings.resolved_adapter_cache_dir, settings.adapter_cache_bytes,
                                      make_blob_store(settings))
        self._pool = None
        self._pool_lock = asyncio.Lock()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Names being resolved right now hold vLLM's per-name lock; evicting one of them would
        # wait on that lock while it may wait on ours: never pick them as victims.
        self._resolving: set[str] = set()
        self._evicting = asyncio.Lock()  # one eviction pass at a time
        from lorafleet.worker.metrics import AdapterMetrics

        self.metrics = AdapterMetrics()

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

    async def _resolve(self, lora_name: str):
        from vllm.lora.request import LoRARequest

        from lorafleet.db import queries

        async with self._locks[lora_name]:
            started = time.perf_counter()
            row = await (await self._db()).fetchrow(queries.adapter_for_worker, lora_name)
            if row is None or row["base_model"] != self.settings.model_name:
                return None  # deleted, unknown, or for another base model: vLLM answers 404
            folder, cached = await asyncio.to_thread(self.cache.ensure, row["id"], row["sha256"], row["config"])
            async with self._evicting:
                for victim in await asyncio.to_thread(self.cache.over_budget, self._resolving | {lora_name}):
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
            # vLLM replaces lora_int_id with its own counter when it loads a resolved adapter; ours is
            # the database's stable id, which is what any other loading path sees.
            return LoRARequest(lora_name=lora_name, lora_int_id=int(row["lora_int_id"]), lora_path=str(folder))

    async def _unload(self, adapter_id: str) -> None:
        """Drop an adapter from this engine through its own API, before its files go."""
        import aiohttp

        url = f"http://127.0.0.1:{self.settings.worker_port}/v1/unload_lora_adapter"
        headers = {"Authorization": f"Bearer {self.settings.internal_token}"}
        try:
            async with aiohttp.ClientSession() as http, http.post(
                url, json={"lora_name": adapter_id}, headers=headers, timeout=aiohttp.ClientTimeout(total=30),
            ) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("adapter_unload_failed", adapter=adapter_id, error=repr(exc))
