"""Run vLLM, keep it healthy, keep the worker registry current, stop cleanly on SIGTERM.

States: start engine → wait for /health → register in ``workers`` → heartbeat while healthy.
When the engine exits or fails its health check three times in a row, the worker leaves the
registry (gateways stop routing to it within a refresh), the engine is killed and started again
with backoff. SIGTERM/SIGINT: leave the registry, stop the engine (SIGTERM, then SIGKILL after a
grace period), exit 0.
"""

from __future__ import annotations

import asyncio
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
from lorafleet.core.settings import Settings
from lorafleet.db import DATABASE_UNAVAILABLE, create_pool, queries
from lorafleet.worker.engine import engine_command, engine_environment

log = structlog.get_logger("lorafleet.worker")

HEARTBEAT_SECONDS = 3.0
UNHEALTHY_LIMIT = 3
STOP_GRACE_SECONDS = 20.0


class WorkerSupervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.resolved_worker_url
        self._stopping = asyncio.Event()
        self._engine: asyncio.subprocess.Process | None = None
        self.restarts = 0

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        pool = await create_pool(self.settings.database_url, max_size=2)
        try:
            row = await pool.fetchrow(
                queries.upsert_base_model, ids.base_model_id(), self.settings.model_name, self.settings.max_model_len,
                msgspec.to_builtins(model_architecture(self.settings.resolved_model_path)), self.settings.max_lora_rank,
            )
            base_model_id = row["id"]
            async with aiohttp.ClientSession() as http:
                backoff = 1.0
                while not self._stopping.is_set():
                    started = time.monotonic()
                    await self._run_engine_once(pool, http, base_model_id)
                    if self._stopping.is_set():
                        break
                    self.restarts += 1
                    backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
                    log.warning("engine_restarting", in_seconds=backoff, restarts=self.restarts)
                    await self._sleep_unless_stopping(backoff)
        finally:
            await self._withdraw(pool)
            await pool.close()
            log.info("worker_stopped", url=self.url)

    async def _run_engine_once(self, pool: asyncpg.Pool, http: aiohttp.ClientSession, base_model_id: str) -> None:
        command = engine_command(self.settings)
        log.info("engine_starting", model=self.settings.model_name, url=self.url)
        # Own process group: vLLM forks engine-core processes, and stopping must reach all of them.
        self._engine = await asyncio.create_subprocess_exec(
            *command, env=engine_environment(self.settings), start_new_session=True,
        )
        engine = self._engine
        try:
            if not await self._wait_healthy(http, engine):
                return
            await pool.execute(queries.upsert_worker, self.url, base_model_id)
            log.info("engine_ready", url=self.url, pid=engine.pid)
            failures = 0
            while not self._stopping.is_set() and engine.returncode is None:
                await self._sleep_unless_stopping(HEARTBEAT_SECONDS)
                if self._stopping.is_set() or engine.returncode is not None:
                    break
                if await self._healthy(http):
                    failures = 0
                    await self._announce(pool, base_model_id)
                else:
                    failures += 1
                    log.warning("engine_unhealthy", failures=failures)
                    if failures >= UNHEALTHY_LIMIT:
                        break
            if engine.returncode is not None:
                log.error("engine_exited", returncode=engine.returncode)
        finally:
            await self._withdraw(pool)
            await self._stop_engine(engine)

    async def _announce(self, pool: asyncpg.Pool, base_model_id: str) -> None:
        """Heartbeat; a database outage must not take the engine down (requests keep flowing)."""
        try:
            await pool.execute(queries.upsert_worker, self.url, base_model_id, timeout=5)
        except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.warning("worker_heartbeat_failed", error=repr(exc))

    async def _withdraw(self, pool: asyncpg.Pool) -> None:
        try:
            await pool.execute(queries.delete_worker, self.url, timeout=5)
        except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.warning("worker_deregister_failed", error=repr(exc))

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
        if engine.returncode is not None:
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
