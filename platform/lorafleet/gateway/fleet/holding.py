"""Requests held while no worker of their base model is ready: bounded, woken once per model, published.

A request whose base model has no routable worker (every one asleep, waking, starting, or none at
all) is held until one is ready, up to ``timeout`` seconds, then answered 503 ``no_worker_ready``
with ``Retry-After``. What a hold may cost this gateway is bounded:

- **count and bytes**, per gateway and per tenant: a hold keeps the request's upstream body in
  memory, so both are capped (``hold_max_requests``/``hold_max_bytes`` and the ``tenant_`` pair).
  Beyond a tenant's caps: 429 ``too_many_held_requests``; beyond the gateway's: 503
  ``hold_capacity_exhausted``; both with ``Retry-After``, and neither held nor counted.
- **wake requests**: one waker task per base model asks its sleeping workers to wake
  (``NOTIFY lorafleet_wake``) when the first request is held and every ``WAKE_REPEAT_SECONDS``
  while any is (a NOTIFY may be missed), whatever the number of requests held.
- **the autoscaler's view**: :attr:`HeldRequests.by_model` counts live holds only — a hold ends
  when its worker is ready, at its timeout, or as soon as its client leaves (the caller passes
  ``gone``, an awaitable that returns when the client has disconnected) — and one publisher task
  writes the latest counts to the database for other gateways' ``/autoscaling``, coalescing bursts.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass

import asyncpg
import structlog
from lorafleet.core.errors import ClientDisconnected, RateLimited, ServiceUnavailable
from lorafleet.core.tasks import stop_task
from lorafleet.db import queries
from lorafleet.gateway.fleet.registry import WorkerRegistry, WorkerState

log = structlog.get_logger("lorafleet.fleet")

WAKE_REPEAT_SECONDS = 5.0    # the waker of a model asks its sleeping workers again this often
RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True, slots=True)
class HoldLimits:
    """0 means no cap."""

    max_requests: int = 0
    max_bytes: int = 0
    tenant_max_requests: int = 0
    tenant_max_bytes: int = 0


class Hold:
    """One held request's place: counted from :meth:`HeldRequests.reserve` until :meth:`release` (once)."""

    __slots__ = ("_holds", "base_model_id", "tenant_id", "size", "_released")

    def __init__(self, holds: HeldRequests, base_model_id: str, tenant_id: str, size: int) -> None:
        self._holds = holds
        self.base_model_id = base_model_id
        self.tenant_id = tenant_id
        self.size = size
        self._released = False

    async def until_ready(self, adapter_id: str | None, gone: Awaitable[None] | None = None) -> list[WorkerState]:
        """The base model's workers, best first, once one is routable; 503 at the timeout;
        :class:`ClientDisconnected` as soon as ``gone`` returns. The hold is released either way."""
        try:
            return await self._holds._wait(self.base_model_id, adapter_id, gone)
        finally:
            self.release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._holds._release(self)


class HeldRequests:
    def __init__(self, pool: asyncpg.Pool, registry: WorkerRegistry, *, timeout: float, limits: HoldLimits,
                 gateway_id: str = "") -> None:
        self._pool = pool
        self._registry = registry
        self.timeout = timeout
        self._limits = limits
        self._gateway_id = gateway_id
        self.by_model: Counter[str] = Counter()    # base model id → live holds here
        self._tenant_count: Counter[str] = Counter()
        self._tenant_bytes: Counter[str] = Counter()
        self.count = 0
        self.bytes = 0
        self._wakers: dict[str, asyncio.Task[None]] = {}
        self._dirty = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.timeout > 0

    async def close(self) -> None:
        for task in list(self._wakers.values()):
            await stop_task(task)
        await stop_task(self._publisher)

    def reserve(self, base_model_id: str, tenant_id: str, size: int) -> Hold:
        """A place for one request of ``size`` body bytes, or the refusal that says which cap is full."""
        limits = self._limits
        held, held_bytes = self._tenant_count[tenant_id], self._tenant_bytes[tenant_id]
        if (limits.tenant_max_requests and held + 1 > limits.tenant_max_requests) or \
                (limits.tenant_max_bytes and held_bytes + size > limits.tenant_max_bytes):
            raise RateLimited(
                f"Too many requests held for this account while workers wake ({held} held, {held_bytes} bytes; at most "
                f"{limits.tenant_max_requests or 'unlimited'} requests and {limits.tenant_max_bytes or 'unlimited'} "
                "bytes); retry shortly.",
                code="too_many_held_requests", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if (limits.max_requests and self.count + 1 > limits.max_requests) or \
                (limits.max_bytes and self.bytes + size > limits.max_bytes):
            raise ServiceUnavailable("This gateway holds as many requests as it may while workers wake; retry shortly.",
                                     code="hold_capacity_exhausted", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        self._tenant_count[tenant_id] = held + 1
        self._tenant_bytes[tenant_id] = held_bytes + size
        self.count += 1
        self.bytes += size
        self.by_model[base_model_id] += 1
        self._changed()
        waker = self._wakers.get(base_model_id)
        if waker is None or waker.done():
            self._wakers[base_model_id] = asyncio.create_task(self._wake(base_model_id), name=f"waker-{base_model_id}")
        return Hold(self, base_model_id, tenant_id, size)

    def _release(self, hold: Hold) -> None:
        _decrement(self._tenant_count, hold.tenant_id, 1)
        _decrement(self._tenant_bytes, hold.tenant_id, hold.size)
        _decrement(self.by_model, hold.base_model_id, 1)
        self.count -= 1
        self.bytes -= hold.size
        self._changed()

    async def _wait(self, base_model_id: str, adapter_id: str | None, gone: Awaitable[None] | None) -> list[WorkerState]:
        waiting = asyncio.ensure_future(self._until_routable(base_model_id, adapter_id))
        if gone is None:
            return await waiting
        watcher = asyncio.ensure_future(gone)
        try:
            await asyncio.wait({waiting, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                return waiting.result()
            raise ClientDisconnected("The client disconnected while its request was held.")
        finally:
            waiting.cancel()
            watcher.cancel()

    async def _until_routable(self, base_model_id: str, adapter_id: str | None) -> list[WorkerState]:
        registry = self._registry
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            ranked = registry.routable(base_model_id, adapter_id)
            if ranked:
                return ranked
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise ServiceUnavailable(
                    f"No worker became ready for this model within {self.timeout:.0f} s; retry shortly.",
                    code="no_worker_ready", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            await registry.wait_changed(left)

    async def _wake(self, base_model_id: str) -> None:
        """While this gateway holds requests for the model: ask its sleeping workers to wake, now and then again."""
        while self.by_model.get(base_model_id, 0) > 0:
            try:
                await self._pool.execute(queries.request_wake, base_model_id, timeout=5)
            except Exception as exc:  # noqa: BLE001 - the holds go on; the next round asks again
                log.warning("wake_request_failed", error=repr(exc)[:300])
            await asyncio.sleep(WAKE_REPEAT_SECONDS)

    def _changed(self) -> None:
        if not self._gateway_id:
            return
        self._dirty.set()
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._publish(), name="held-publisher")

    async def _publish(self) -> None:
        """The latest counts, where autoscalers (through any gateway's /autoscaling) can read them; one write
        at a time, so a burst of holds and releases costs a few writes, not two per request."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._pool.execute(queries.set_gateway_held, self._gateway_id, dict(self.by_model), timeout=5)
            except Exception as exc:  # noqa: BLE001
                log.warning("held_publish_failed", error=repr(exc)[:300])
                await asyncio.sleep(1.0)
                self._dirty.set()  # try again with what is held by then


def _decrement(counter: Counter[str], key: str, amount: int) -> None:
    left = counter[key] - amount
    if left > 0:
        counter[key] = left
    else:
        del counter[key]
