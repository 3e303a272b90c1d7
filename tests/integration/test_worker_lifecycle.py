"""The worker restarts a dead engine and stops cleanly on SIGTERM. Runs last: it disrupts the worker."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.engine, pytest.mark.disruptive]


def _engine_processes(worker) -> list[psutil.Process]:
    return psutil.Process(worker.process.pid).children(recursive=True)


async def test_engine_death_is_restarted_then_sigterm_stops_cleanly(worker, gateway, client, db, model_name):
    engine = _engine_processes(worker)[0]
    os.killpg(engine.pid, signal.SIGKILL)  # the engine and its engine-core processes die at once

    async with httpx.AsyncClient(base_url=gateway.url) as http:
        deadline = time.monotonic() + 30
        while (await http.get("/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "gateway still sees the dead worker as ready"
            await asyncio.sleep(0.2)
        deadline = time.monotonic() + 420
        while (await http.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, f"engine not restarted:\n{worker.log_text()[-3000:]}"
            assert worker.process.poll() is None, "the supervisor itself died"
            await asyncio.sleep(1)
    assert _engine_processes(worker)[0].pid != engine.pid
    reply = await client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert reply.usage.completion_tokens > 0

    engine_pids = [p.pid for p in _engine_processes(worker)]
    assert await db.fetchval("SELECT count(*) FROM workers WHERE url = $1", worker.url) == 1
    returncode = await asyncio.to_thread(worker.stop, signal.SIGTERM, 60)
    assert returncode == 0
    assert not [pid for pid in engine_pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert await db.fetchval("SELECT count(*) FROM workers WHERE url = $1", worker.url) == 0
