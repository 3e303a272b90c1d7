"""Which workers exist, what each holds and does, and which of them takes a request.

Workers announce themselves in the ``workers`` table (URL, base model, state, heartbeat). Every
``worker_refresh_seconds`` the registry re-reads that table and polls each worker's
``GET /lorafleet/state`` with the internal token: adapters in its LoRA slots, CPU LRU and disk
cache, requests running and waiting, KV-cache use. Between polls the registry counts what this
gateway sends each worker (requests and adapters in flight), so placement sees its own decisions
at once. :func:`~lorafleet.gateway.fleet.placement.rank` orders a base model's ready workers for
a request; the relay tries them in that order.

Workers announce state changes with ``NOTIFY lorafleet_workers``: the registry listens and
re-reads at once, so a draining or sleeping worker gets nothing new within milliseconds. A request
for a base model with no routable worker is held until one is (holding.py, which waits on
:meth:`WorkerRegistry.wait_changed`).

A busy worker is not a dead one. An engine using every core answers its state poll late: a poll
that times out keeps the worker's last known state and routing (logged at debug level only). A
worker leaves routing when a poll cannot connect or gets a wrong answer (its engine is gone), when
no poll has been answered for ``silence_seconds`` (``LORAFLEET_WORKER_SILENCE_SECONDS``: many poll
periods), when its heartbeat stops (the ``workers`` row goes stale), or after
:data:`FAILURES_BEFORE_UNREADY` consecutive request failures (for :data:`QUARANTINE_SECONDS`, then
one request probes it) — never on one slow poll or one error. A failure also triggers an immediate
re-poll, so a worker that restarted is back at once.

What the gateway asks of workers about one adapter (prewarm, pin, unload) is adapter_calls.py's.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import structlog
from lorafleet.core.errors import ServiceUnavailable
from lorafleet.core.tasks import stop_task
from lorafleet.core.worker_state import WorkerStateReport, decode_report
from lorafleet.db import is_unavailable, queries
from lorafleet.gateway.fleet.placement import DEFAULT_POLICY, PlacementPolicy, rank_with

log = structlog.get_logger("lorafleet.fleet")

HEARTBEAT_GRACE_SECONDS = 15.0
WORKERS_CHANNEL = "lorafleet_workers"
FAILURES_BEFORE_UNREADY = 3
QUARANTINE_SECONDS = 5.0     # a worker that kept failing gets no requests for this long, then one to probe it
POLL_TIMEOUT_SECONDS = 2.0


def worker_label(url: str) -> str:
    """An opaque, stable name for a worker in metrics and logs visible beyond the operator."""
    return "w_" + hashlib.blake2b(url.encode(), digest_size=6).hexdigest()




@dataclass(slots=True, eq=False)
class WorkerState:
    """One worker as this gateway sees it; satisfies placement's ``WorkerLoad``."""

    url: str
    base_model_id: str
    base_model_name: str
    id: str = ""
    state: str = "ready"               # the worker's own: ready | draining | asleep | waking
    ready: bool = False                # answering its polls and routable
    max_loras: int = 1
    in_flight: int = 0                 # this gateway's requests on it
    waiting: int = 0
    running: int = 0
    idle_seconds: float = 0.0
    kv_cache_usage: float = 0.0
    slots: frozenset[str] = frozenset()
    cpu: frozenset[str] = frozenset()
    disk: frozenset[str] = frozenset()
    pinned: frozenset[str] = frozenset()
    active: dict[str, int] = field(default_factory=dict)   # adapter → requests in flight (ours, plus theirs as 1)
    failures: int = 0                  # consecutive failed requests; a successful one resets it
    quarantined_until: float = 0.0
    polled_at: float = 0.0
    _ours: Counter[str] = field(default_factory=Counter)
    _theirs: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.id = self.id or worker_label(self.url)

    @property
    def quarantined(self) -> bool:
        return time.monotonic() < self.quarantined_until

    @property
    def routable(self) -> bool:
        return self.ready and self.state == "ready" and not self.quarantined

    @property
    def resident_adapters(self) -> int:
        return len(self.slots | self.cpu)

    def take(self, adapter_id: str | None) -> Callable[[], None]:
        """Count a request routed here until the returned callable releases it (once)."""
        self.in_flight += 1
        if adapter_id is not None:
            self._ours[adapter_id] += 1
            self._merge()
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.in_flight -= 1
            if adapter_id is not None:
                self._ours[adapter_id] -= 1
                if self._ours[adapter_id] <= 0:
                    del self._ours[adapter_id]
                self._merge()

        return release

    def apply(self, report: WorkerStateReport) -> None:
        adapters = report.adapters
        self.max_loras = max(1, report.max_loras)
        self.waiting = int(report.waiting)
        self.running = int(report.running)
        self.idle_seconds = report.idle_seconds
        self.kv_cache_usage = report.kv_cache_usage
        self.slots = frozenset(adapters.slots)
        self.cpu = frozenset(adapters.cpu)
        # Pinned on disk only (not yet loaded) ranks as disk residency; pinned in the engine as pinned.
        self.disk = frozenset(adapters.disk) | frozenset(adapters.disk_pinned)
        self.pinned = frozenset(adapters.pinned)
        self._theirs = frozenset(adapters.running)
        self._merge()

    def _merge(self) -> None:
        active = dict(self._ours)
        for adapter in self._theirs:
            active.setdefault(adapter, 1)
        self.active = active


class WorkerRegistry:
    def __init__(self, pool: asyncpg.Pool, http: aiohttp.ClientSession, internal_token: str, refresh_seconds: float,
                 policy: PlacementPolicy = DEFAULT_POLICY, *, database_url: str = "", gateway_id: str = "",
                 strategy: str = "residency", silence_seconds: float = 30.0) -> None:
        self._pool = pool
        self._silence_seconds = silence_seconds
        self._http = http
        self._headers = {"Authorization": f"Bearer {internal_token}"}
        self._refresh_seconds = refresh_seconds
        self._policy = policy
        self._strategy = strategy
        self._database_url = database_url
        self._gateway_id = gateway_id
        self._workers: dict[str, WorkerState] = {}
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None
        self._repoll = asyncio.Event()
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="worker-registry")

    async def close(self) -> None:
        await stop_task(self._task)
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()

    async def _listen(self) -> None:
        """(Re)open the connection that hears workers change state; without it, the clock still re-reads."""
        if not self._database_url or (self._listener is not None and not self._listener.is_closed()):
            return
        try:
            self._listener = await asyncpg.connect(self._database_url, timeout=5)
            await self._listener.add_listener(WORKERS_CHANNEL, lambda *_: self._repoll.set())
        except Exception as exc:  # noqa: BLE001 - polling on the clock still works
            self._listener = None
            log.warning("worker_listener_failed", error=repr(exc)[:300])

    @property
    def policy(self) -> PlacementPolicy:
        return self._policy

    def workers(self) -> list[WorkerState]:
        return list(self._workers.values())

    def routable(self, base_model_id: str, adapter_id: str | None) -> list[WorkerState]:
        """The base model's routable workers, best first for this request; empty when there are none."""
        try:
            return self.ranked(base_model_id, adapter_id)
        except ServiceUnavailable:
            return []

    async def wait_changed(self, timeout: float) -> None:
        """Until the next refresh (or ``timeout`` seconds): what a held request waits on between looks."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass

    def ranked(self, base_model_id: str, adapter_id: str | None) -> list[WorkerState]:
        """The base model's routable workers, best first for this request; 503 when there are none."""
        ready = [w for w in self._workers.values() if w.ready and w.base_model_id == base_model_id]
        # Quarantined workers only when nothing else is left: trying beats refusing. Never a draining,
        # sleeping or waking one: those requests are held for a worker that can take them.
        candidates = [w for w in ready if w.routable] or [w for w in ready if w.state == "ready"]
        if not candidates:
            raise ServiceUnavailable("No worker is ready to serve this model right now; retry shortly.",
                                     code="no_worker_ready")
        return rank_with(self._strategy, candidates, adapter_id, self._policy)

    def gone(self, worker: WorkerState) -> bool:
        """The worker has left routing for good reason (its engine gone, silent too long, no heartbeat):
        a request waiting on it will not be answered."""
        return not worker.ready or self._workers.get(worker.url) is not worker

    def report_success(self, worker: WorkerState) -> None:
        worker.failures = 0

    def report_failure(self, worker: WorkerState) -> None:
        """Passive health: a worker leaves routing for a while after several consecutive failures."""
        worker.failures += 1
        if worker.failures >= FAILURES_BEFORE_UNREADY:
            worker.quarantined_until = time.monotonic() + QUARANTINE_SECONDS
            log.warning("worker_quarantined", worker=worker.id, failures=worker.failures, seconds=QUARANTINE_SECONDS)
        self._repoll.set()

    async def _loop(self) -> None:
        while True:
            await self._listen()
            try:
                await asyncio.wait_for(self._repoll.wait(), self._refresh_seconds)
            except TimeoutError:
                pass
            self._repoll.clear()
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep routing on the last known state; the next tick retries
                log.warning("worker_refresh_failed", error=repr(exc)[:300])

    async def refresh(self) -> None:
        try:
            rows = await self._pool.fetch(queries.list_live_workers, HEARTBEAT_GRACE_SECONDS)
        except Exception as exc:  # noqa: BLE001
            if not is_unavailable(exc):
                raise
            # Keep the workers we know and keep polling them: requests keep flowing through an outage.
            log.warning("worker_refresh_failed", error=repr(exc)[:300], database_away=True)
            seen = self._workers
        else:
            seen = {}
            for row in rows:
                state = self._workers.get(row["url"]) or WorkerState(row["url"], row["base_model_id"],
                                                                     row["base_model_name"])
                state.base_model_id, state.base_model_name = row["base_model_id"], row["base_model_name"]
                state.state = row["state"]
                seen[row["url"]] = state
        # An asleep worker has no engine to poll: it is known, not ready.
        await asyncio.gather(*(self._poll(state) for state in seen.values() if state.state != "asleep"))
        for state in seen.values():
            if state.state == "asleep":
                state.ready = False
        self._workers = seen
        async with self._changed:
            self._changed.notify_all()

    async def _poll(self, worker: WorkerState) -> None:
        try:
            async with self._http.get(f"{worker.url}/lorafleet/state", headers=self._headers,
                                      timeout=aiohttp.ClientTimeout(total=POLL_TIMEOUT_SECONDS)) as response:
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}")
                report = decode_report(await response.read())
        except TimeoutError:
            # Late, not wrong: an engine busy with the CPU answers its poll late. Its last known state
            # stands until it has been silent for long (aiohttp's connect and read timeouts are TimeoutErrors).
            silent = time.monotonic() - worker.polled_at
            if worker.ready and silent >= self._silence_seconds:
                log.warning("worker_unready", worker=worker.id, reason="silent", silent_seconds=round(silent, 1))
                worker.ready = False
            else:
                log.debug("worker_poll_late", worker=worker.id, silent_seconds=round(silent, 1))
            return
        except Exception as exc:  # noqa: BLE001 - a refused connection or a wrong answer: its engine is gone
            if worker.ready:
                log.warning("worker_unready", worker=worker.id, error=repr(exc)[:300])
            worker.ready = False
            return
        worker.apply(report)
        worker.polled_at = time.monotonic()
        if not worker.ready:
            log.info("worker_ready", worker=worker.id)
        worker.ready = True
