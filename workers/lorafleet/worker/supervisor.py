"""Run vLLM, keep it healthy, tell the fleet what it is doing, sleep when idle, drain on SIGTERM.

The worker's state lives in its ``workers`` row, and every change is NOTIFYed so gateways re-read
at once: ``starting`` → ``ready`` → ``draining`` (SIGTERM) | ``asleep`` (idle) → ``waking`` → ``ready``.

- **Health**: the engine exiting or failing its health check three times in a row ends it; it
  is restarted with backoff.
- **Sleep** (``LORAFLEET_WORKER_IDLE_SECONDS``): once no request has run for that long, the worker
  reports ``asleep`` and releases its engine — ``stop`` ends the engine process (its memory goes
  back to the machine), ``vllm`` uses vLLM's sleep mode (GPU). It keeps heartbeating, and wakes
  when a gateway holding a request for its base model asks (``NOTIFY lorafleet_wake``, or the
  ``wake_requested_at`` a heartbeat reads if a notification was missed).
- **Drain** (SIGTERM/SIGINT): ``draining`` takes it out of routing at once; requests in flight
  finish (up to ``LORAFLEET_WORKER_DRAIN_SECONDS``); then it deregisters, stops the engine (SIGTERM,
  then SIGKILL after a grace period) and exits 0.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time

import aiohttp
import asyncpg
import msgspec
import psutil
import structlog
from lorafleet.adapters.architecture import model_architecture
from lorafleet.core import ids
from lorafleet.core.settings import WorkerSettings
from lorafleet.core.worker_state import WorkerStateReport, decode_report
from lorafleet.db import create_pool, is_unavailable, queries
from lorafleet.db.migrate import migrate
from lorafleet.worker.engine import engine_command, engine_environment

log = structlog.get_logger("lorafleet.worker")


async def apply_migrations(database_url: str) -> bool:
    """Apply pending migrations: a worker may come up before any gateway has migrated a fresh database
    (migrations take a lock). With the limited role SECURITY.md recommends it may not, and the
    migration Job or a gateway does; False then."""
    try:
        await migrate(database_url)
    except asyncpg.InsufficientPrivilegeError:
        log.info("migrations_left_to_the_operator", reason="this database role may not change the schema")
        return False
    return True

HEARTBEAT_SECONDS = 3.0
PIN_CHECK_SECONDS = 30.0  # how often the worker re-reads the operator's pins (gateways also push them at once)
UNHEALTHY_LIMIT = 3
STOP_GRACE_SECONDS = 20.0
WAKE_CHANNEL = "lorafleet_wake"




class WorkerSupervisor:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.url = settings.resolved_worker_url
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._engine: asyncio.subprocess.Process | None = None
        self._engine_asleep = False  # vLLM sleep mode: the process is kept, asleep
        self._pinned: set[str] = set()
        self._base_model_id = ""
        self._headers = {"Authorization": f"Bearer {settings.internal_token}"}
        self.restarts = 0

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await apply_migrations(self.settings.database_url)
        pool = await create_pool(self.settings.database_url, max_size=2)
        listener: asyncpg.Connection | None = None
        try:
            row = await pool.fetchrow(
                queries.upsert_base_model, ids.base_model_id(), self.settings.model_name, self.settings.max_model_len,
                msgspec.to_builtins(model_architecture(self.settings.resolved_model_path)), self.settings.max_lora_rank,
                self.settings.worker_task,
            )
            self._base_model_id = row["id"]
            listener = await self._listen()
            async with aiohttp.ClientSession() as http:
                backoff, state = 1.0, "starting"
                while not self._stopping.is_set():
                    started = time.monotonic()
                    ended = await self._serve(pool, http, state)
                    if self._stopping.is_set():
                        break
                    if ended == "asleep":
                        await self._sleep_until_woken(pool)
                        state, backoff = "waking", 1.0
                        continue
                    self.restarts += 1
                    state = "starting"
                    backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
                    log.warning("engine_restarting", in_seconds=backoff, restarts=self.restarts)
                    await self._sleep_unless_stopping(backoff)
        finally:
            await self._withdraw(pool)
            if listener is not None and not listener.is_closed():
                await listener.close()
            await pool.close()
            log.info("worker_stopped", url=self.url)

    # ---- one engine's life ----------------------------------------------------------------------

    async def _serve(self, pool: asyncpg.Pool, http: aiohttp.ClientSession, state: str) -> str:
        """Start the engine and keep it until it dies ("failed"), sleeps ("asleep") or we stop ("stopped")."""
        await self._set_state(pool, state)
        engine = self._engine
        if self._engine_asleep and engine is not None and engine.returncode is None:
            self._engine_asleep = False
            if not await self._engine_call(http, "wake"):
                log.warning("engine_wake_failed")
        else:
            log.info("engine_starting", model=self.settings.model_name, url=self.url, state=state)
            # Own process group: vLLM forks engine-core processes, and stopping must reach all of them.
            self._engine = engine = await asyncio.create_subprocess_exec(
                *engine_command(self.settings), env=engine_environment(self.settings), start_new_session=True,
            )
        sleeping = False
        try:
            if not await self._wait_healthy(http, engine):
                return "stopped" if self._stopping.is_set() else "failed"
            self._pinned = set()  # a new engine holds nothing: pin again
            await self._keep_pins(pool, http)
            await self._set_state(pool, "ready")
            log.info("engine_ready", url=self.url, pid=engine.pid)
            failures, pins_checked = 0, time.monotonic()
            while engine.returncode is None:
                await self._sleep_unless_stopping(HEARTBEAT_SECONDS)
                if self._stopping.is_set():
                    await self._drain(pool, http)
                    return "stopped"
                if engine.returncode is not None:
                    break
                if not await self._healthy(http):
                    failures += 1
                    log.warning("engine_unhealthy", failures=failures)
                    if failures >= UNHEALTHY_LIMIT:
                        return "failed"
                    continue
                failures = 0
                await self._heartbeat(pool)
                if time.monotonic() - pins_checked > PIN_CHECK_SECONDS:
                    pins_checked = time.monotonic()
                    await self._keep_pins(pool, http)
                if self.settings.worker_idle_seconds and await self._idle_enough(http):
                    await self._set_state(pool, "asleep")
                    sleeping = self.settings.worker_sleep_mode == "vllm" and await self._engine_call(http, "sleep")
                    self._engine_asleep = sleeping
                    log.info("worker_asleep", mode="vllm" if sleeping else "stop")
                    return "asleep"
            log.error("engine_exited", returncode=engine.returncode)
            return "failed"
        finally:
            if not sleeping:
                await self._stop_engine(engine)

    async def _idle_enough(self, http: aiohttp.ClientSession) -> bool:
        state = await self._engine_state(http)
        return (state is not None and state.in_flight == 0 and state.running + state.waiting == 0
                and state.idle_seconds >= self.settings.worker_idle_seconds)

    async def _drain(self, pool: asyncpg.Pool, http: aiohttp.ClientSession) -> None:
        """Out of routing at once; wait (bounded) until nothing runs any more."""
        await self._set_state(pool, "draining")
        deadline = time.monotonic() + self.settings.worker_drain_seconds
        log.info("worker_draining", seconds=self.settings.worker_drain_seconds)
        while time.monotonic() < deadline:
            state = await self._engine_state(http)
            if state is None or (state.in_flight == 0 and state.running + state.waiting == 0):
                return
            await asyncio.sleep(0.25)
        log.warning("worker_drain_timeout", seconds=self.settings.worker_drain_seconds)

    async def _sleep_until_woken(self, pool: asyncpg.Pool) -> None:
        """Heartbeat as ``asleep`` until a gateway asks for a wake-up (or we are told to stop)."""
        asleep_since = dt.datetime.now(dt.UTC)
        self._wake.clear()
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), HEARTBEAT_SECONDS)
            except TimeoutError:
                pass
            if self._wake.is_set() or await self._wake_was_requested(pool, asleep_since):
                log.info("worker_waking")
                return
            await self._heartbeat(pool)

    async def _wake_was_requested(self, pool: asyncpg.Pool, since: dt.datetime) -> bool:
        try:
            return bool(await pool.fetchval(queries.wake_requested, self.url, since, timeout=5))
        except Exception as exc:  # noqa: BLE001 - asleep through a database outage is fine; retry next beat
            log.warning("wake_check_failed", error=repr(exc)[:300], database_away=is_unavailable(exc))
            return False

    async def _listen(self) -> asyncpg.Connection | None:
        """A connection that hears gateways ask this worker's base model to wake."""
        def on_wake(_connection, _pid, _channel, payload: str) -> None:
            if payload == self._base_model_id:
                self._wake.set()

        try:
            connection = await asyncpg.connect(self.settings.database_url)
            await connection.add_listener(WAKE_CHANNEL, on_wake)
            return connection
        except Exception as exc:  # noqa: BLE001 - heartbeats still read wake_requested_at
            log.warning("wake_listener_failed", error=repr(exc)[:300])
            return None

    async def _keep_pins(self, pool: asyncpg.Pool, http: aiohttp.ClientSession) -> None:
        """Pin what the operator pinned for this base model, unpin what they no longer do."""
        try:
            wanted = {row["id"] for row in await pool.fetch(queries.pinned_adapters, self.settings.model_name,
                                                            timeout=5)}
        except Exception as exc:  # noqa: BLE001 - keep the pins we have; the next check retries
            log.warning("pin_check_failed", error=repr(exc)[:300])
            return
        for adapter_id, action in [*((a, "pin") for a in wanted - self._pinned),
                                   *((a, "unpin") for a in self._pinned - wanted)]:
            try:
                async with http.post(f"{self.url}/lorafleet/adapters/{adapter_id}/{action}", headers=self._headers,
                                     timeout=aiohttp.ClientTimeout(total=60)) as response:
                    if response.status == 200:
                        (self._pinned.add if action == "pin" else self._pinned.discard)(adapter_id)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("adapter_pin_failed", adapter=adapter_id, error=repr(exc)[:300])

    # ---- the engine -----------------------------------------------------------------------------

    async def _engine_state(self, http: aiohttp.ClientSession) -> WorkerStateReport | None:
        try:
            async with http.get(f"{self.url}/lorafleet/state", headers=self._headers,
                                timeout=aiohttp.ClientTimeout(total=5)) as response:
                if response.status != 200:
                    return None
                return decode_report(await response.read())
        except msgspec.DecodeError as exc:  # the engine answers, in a shape this supervisor does not know
            log.warning("engine_state_unreadable", error=str(exc)[:300])
            return None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def _engine_call(self, http: aiohttp.ClientSession, action: str) -> bool:
        """vLLM's sleep mode (``sleep`` / ``wake``): weights and KV cache freed, the process kept (GPU)."""
        try:
            async with http.post(f"{self.url}/lorafleet/{action}", headers=self._headers,
                                 timeout=aiohttp.ClientTimeout(total=120)) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _wait_healthy(self, http: aiohttp.ClientSession, engine: asyncio.subprocess.Process) -> bool:
        deadline = time.monotonic() + self.settings.engine_start_timeout_seconds
        while time.monotonic() < deadline:
            if self._stopping.is_set() or engine.returncode is not None:
                return False
            if await self._healthy(http):
                return True
            await self._sleep_unless_stopping(0.5)
        log.error("engine_start_timeout", seconds=self.settings.engine_start_timeout_seconds)
        return False

    async def _healthy(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=5)) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _stop_engine(self, engine: asyncio.subprocess.Process) -> None:
        if engine.returncode is not None and not _group_alive(engine.pid):
            return
        _signal_group(engine.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(engine.wait(), STOP_GRACE_SECONDS)
        except TimeoutError:
            log.warning("engine_kill")
            _signal_group(engine.pid, signal.SIGKILL)
            await engine.wait()
        # Children that outlived the server (a crash leaves them) go with the group; wait until they are
        # really gone, so "stopped" means no engine process is left (a SIGKILL lands asynchronously).
        _signal_group(engine.pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while _group_alive(engine.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # ---- the registry ---------------------------------------------------------------------------

    async def _set_state(self, pool: asyncpg.Pool, state: str) -> None:
        """Register in ``state`` and tell the gateways; a database outage must not take the engine down."""
        try:
            await pool.execute(queries.upsert_worker, self.url, self._base_model_id, state, timeout=5)
        except Exception as exc:  # noqa: BLE001
            log.warning("worker_state_failed", state=state, error=repr(exc)[:300], database_away=is_unavailable(exc))

    async def _heartbeat(self, pool: asyncpg.Pool) -> None:
        try:
            if await pool.fetchval(queries.heartbeat_worker, self.url, timeout=5) is None:
                log.warning("worker_row_missing")  # deleted behind our back: the next state change re-adds it
        except Exception as exc:  # noqa: BLE001
            log.warning("worker_heartbeat_failed", error=repr(exc)[:300], database_away=is_unavailable(exc))

    async def _withdraw(self, pool: asyncpg.Pool) -> None:
        try:
            await pool.execute(queries.delete_worker, self.url, timeout=5)
        except Exception as exc:  # noqa: BLE001
            log.warning("worker_deregister_failed", error=repr(exc)[:300])

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is left that is not a zombie."""
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
