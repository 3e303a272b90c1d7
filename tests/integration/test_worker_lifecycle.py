"""The worker restarts a dead engine and stops cleanly on SIGTERM. Runs last: it disrupts the worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import psutil
import pytest

from tests.helpers import ledger_row

pytestmark = [pytest.mark.engine, pytest.mark.disruptive]


def _engine_processes(worker) -> list[psutil.Process]:
    return psutil.Process(worker.process.pid).children(recursive=True)


async def test_engine_death_is_restarted_then_sigterm_stops_cleanly(worker, gateway, client, tenant_key, db, model_name):
    engine = _engine_processes(worker)[0]
    body = {"model": model_name, "prompt": "Once", "max_tokens": 1500, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    received, events, killed = 0, [], False
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http, http.stream(
        "POST", "/v1/completions", json=body, headers={"Authorization": f"Bearer {tenant_key.secret}"}
    ) as response:
        request_id = response.headers["x-request-id"]
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if "usage" in events[-1]:
                    received = events[-1]["usage"]["completion_tokens"]
                if received >= 10 and not killed:
                    os.killpg(engine.pid, signal.SIGKILL)  # engine and engine-core processes die mid-stream
                    killed = True
    # The stream ends with an error event, and the ledger keeps what was generated before the crash.
    assert events[-1]["error"]["code"] == "upstream_error"
    row = await ledger_row(db, request_id)
    assert row["outcome"] == "upstream_error" and received <= row["completion_tokens"] < 1500

    # While the supervisor restarts the engine, requests for its base model are held until it is
    # back (a worker starting up counts as coming back), then served. Only those sent before the
    # gateway noticed the crash may reach the dead engine: a clear 503, never a hang or a 500.
    hello = {"model": model_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=300,
                                 headers={"Authorization": f"Bearer {tenant_key.secret}"}) as http:
        deadline, refused = time.monotonic() + 420, 0
        while (response := await http.post("/v1/chat/completions", json=hello)).status_code != 200:
            refused += 1
            assert refused <= 5, "requests are refused while the engine restarts instead of being held"
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] in ("worker_unreachable", "no_worker_ready"), response.text
            assert time.monotonic() < deadline, f"engine not restarted:\n{worker.log_text()[-3000:]}"
            assert worker.process.poll() is None, "the supervisor itself died"
            await asyncio.sleep(0.2)
    assert _engine_processes(worker)[0].pid != engine.pid
    reply = await client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert reply.usage.completion_tokens > 0

    engine_pids = [p.pid for p in _engine_processes(worker)]
    assert await db.fetchval("SELECT count(*) FROM workers WHERE url = $1", worker.url) == 1
    returncode = await asyncio.to_thread(worker.stop, signal.SIGTERM, 60)
    assert returncode == 0
    assert not [pid for pid in engine_pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert await db.fetchval("SELECT count(*) FROM workers WHERE url = $1", worker.url) == 0
