"""Which worker serves a request (and the base models they serve).

Workers announce themselves in the ``workers`` table (URL, base model, heartbeat). Every
``worker_refresh_seconds`` the gateway re-reads that table and polls each worker's ``/v1/models``
with the internal token; a worker is ready when it answers and lists its base model. Among the
ready workers of a base model, placement.choose decides (least busy; adapters by rendezvous hash).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import structlog

from lorafleet.core.errors import ServiceUnavailable
from lorafleet.core.tasks import stop_task
from lorafleet.db import DATABASE_UNAVAILABLE, queries
from lorafleet.gateway.catalog import ModelCatalog
from lorafleet.gateway.placement import choose

log = structlog.get_logger("lorafleet.routing")

HEARTBEAT_GRACE_SECONDS = 15.0


def worker_label(url: str) -> str:
    """An opaque, stable name for a worker in metrics and logs visible beyond the operator."""
    return "w_" + hashlib.blake2b(url.encode(), digest_size=6).hexdigest()


@dataclass(slots=True)
class WorkerState:
    url: str
    base_model_id: str
    base_model_name: str
    ready: bool = False
    in_flight: int = 0
    served_models: frozenset[str] = field(default_factory=frozenset)
    registered_adapters: int = 0  # adapters the engine knows by name (resolved, not yet unloaded)


class WorkerRegistry:
    def __init__(self, pool: asyncpg.Pool, http: aiohttp.ClientSession, internal_token: str, refresh_seconds: float,
                 catalog: ModelCatalog) -> None:
        self._pool = pool
        self._catalog = catalog
        self._http = http
        self._headers = {"Authorization": f"Bearer {internal_token}"}
        self._refresh_seconds = refresh_seconds
        self._workers: dict[str, WorkerState] = {}
        self._task: asyncio.Task[None] | None = None
        self.refreshed = asyncio.Event()

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="worker-registry")

    async def close(self) -> None:
        await stop_task(self._task)

    def workers(self) -> list[WorkerState]:
        return list(self._workers.values())

    def any_ready(self) -> bool:
        return any(worker.ready for worker in self._workers.values())

    def pick(self, base_model_id: str, adapter_id: str | None = None) -> WorkerState:
        candidates = [w for w in self._workers.values() if w.ready and w.base_model_id == base_model_id]
        if not candidates:
            raise ServiceUnavailable("No worker is ready to serve this model right now; retry shortly.", code="no_worker_ready")
        return choose(candidates, adapter_id)

    async def unload_adapter(self, adapter_id: str) -> None:
        """Ask every worker to drop an adapter now; its resolver refuses it from here on anyway."""
        async def unload(worker: WorkerState) -> None:
            try:
                async with self._http.post(
                    f"{worker.url}/lorafleet/adapters/{adapter_id}/unload", headers=self._headers,
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as response:
                    if response.status not in (200, 400, 404):  # 400/404: it was not loaded there
                        log.warning("adapter_unload_failed", worker=worker.url, status=response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("adapter_unload_failed", worker=worker.url, error=repr(exc))

        await asyncio.gather(*(unload(worker) for worker in self._workers.values()))

    def mark_unready(self, worker: WorkerState) -> None:
        worker.ready = False

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            try:
                await self.refresh()
            except Exception as exc:  # keep routing on the last known state; the next tick retries
                log.warning("worker_refresh_failed", error=repr(exc))

    async def refresh(self) -> None:
        try:
            await self._catalog.refresh()
            rows = await self._pool.fetch(queries.list_live_workers, HEARTBEAT_GRACE_SECONDS)
        except DATABASE_UNAVAILABLE as exc:
            # Keep the workers we know and keep polling them: one failed request must not leave a
            # worker unready for the whole outage.
            log.warning("worker_refresh_failed", error=repr(exc))
            seen = self._workers
        else:
            seen = {}
            for row in rows:
                state = self._workers.get(row["url"]) or WorkerState(row["url"], row["base_model_id"], row["base_model_name"])
                state.base_model_id, state.base_model_name = row["base_model_id"], row["base_model_name"]
                seen[row["url"]] = state
        await asyncio.gather(*(self._poll(state) for state in seen.values()))
        self._workers = seen
        self.refreshed.set()

    async def _poll(self, worker: WorkerState) -> None:
        try:
            async with self._http.get(
                f"{worker.url}/v1/models", headers=self._headers, timeout=aiohttp.ClientTimeout(total=2.0)
            ) as response:
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}")
                body = await response.json()
            worker.served_models = frozenset(model["id"] for model in body.get("data", []))
            worker.registered_adapters = sum(1 for model in body.get("data", []) if model.get("parent"))
            worker.ready = worker.base_model_name in worker.served_models
        except Exception as exc:
            if worker.ready:
                log.warning("worker_unready", worker=worker.url, error=repr(exc))
            worker.ready = False
