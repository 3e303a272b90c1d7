"""What the gateway asks of workers about one adapter: fetch it ahead of its first request, pin or
unpin it in their engines, drop it once deleted. Calls to the workers the registry knows; placement
picks where a prewarmed adapter goes (the worker its first request would be sent to)."""

from __future__ import annotations

import asyncio

import aiohttp
import structlog
from lorafleet.gateway.fleet.placement import rank
from lorafleet.gateway.fleet.registry import WorkerRegistry, WorkerState

log = structlog.get_logger("lorafleet.fleet")


class AdapterCalls:
    def __init__(self, registry: WorkerRegistry, http: aiohttp.ClientSession, internal_token: str) -> None:
        self._registry = registry
        self._http = http
        self._headers = {"Authorization": f"Bearer {internal_token}"}

    async def prewarm(self, adapter_id: str, base_model_name: str, *, load: bool) -> bool:
        """Fetch an adapter onto the worker placement would send it to (and load it there with ``load``),
        so its first request is not a cold load. False when no worker of its base model is ready."""
        candidates = [w for w in self._registry.workers() if w.ready and w.base_model_name == base_model_name]
        if not candidates:
            return False
        worker = rank(candidates, adapter_id, self._registry.policy)[0]
        try:
            async with self._http.post(
                f"{worker.url}/lorafleet/adapters/{adapter_id}/prewarm", params={"load": "1" if load else "0"},
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=60),
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("adapter_prewarm_failed", worker=worker.id, error=repr(exc)[:300])
            return False

    async def pin_everywhere(self, adapter_id: str, base_model_name: str, pinned: bool) -> int:
        """Pin (or unpin) an adapter on every ready worker of its base model now; workers also re-pin on
        their own after a restart. The number of workers that confirmed."""
        action = "pin" if pinned else "unpin"

        async def one(worker: WorkerState) -> bool:
            try:
                async with self._http.post(f"{worker.url}/lorafleet/adapters/{adapter_id}/{action}",
                                           headers=self._headers, timeout=aiohttp.ClientTimeout(total=60)) as response:
                    return response.status == 200
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("adapter_pin_failed", worker=worker.id, error=repr(exc)[:300])
                return False

        workers = [w for w in self._registry.workers() if w.ready and w.base_model_name == base_model_name]
        return sum(await asyncio.gather(*(one(worker) for worker in workers)))

    async def unload_adapter(self, adapter_id: str) -> None:
        """Ask every worker to drop an adapter now; its resolver refuses it from here on anyway."""
        async def unload(worker: WorkerState) -> None:
            try:
                async with self._http.post(
                    f"{worker.url}/lorafleet/adapters/{adapter_id}/unload", headers=self._headers,
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as response:
                    if response.status != 200:
                        log.warning("adapter_unload_failed", worker=worker.id, status=response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("adapter_unload_failed", worker=worker.id, error=repr(exc)[:300])

        await asyncio.gather(*(unload(worker) for worker in self._registry.workers()))
