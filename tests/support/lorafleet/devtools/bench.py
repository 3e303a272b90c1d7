"""A whole platform for a benchmark run: its own database, one SmolLM2 worker, one gateway, a key."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from lorafleet.db.migrate import migrate
from lorafleet.devtools.database import DatabaseFactory, server_dsn
from lorafleet.devtools.services import (
    Service,
    platform_env,
    start_gateway,
    start_worker,
)
from lorafleet.models.prepare import prepare_smollm2
from lorafleet.tenancy import TenancyService

MODEL = "SmolLM2-135M-Instruct"
# Where every benchmark keeps its report; benchmarks/report.py gathers them into BENCHMARKS.md.
RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results"


def publish(name: str, report: str) -> None:
    """Print a benchmark's report and keep it as ``benchmarks/results/NAME.md``."""
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(report)


@dataclass
class BenchPlatform:
    worker: Service
    gateway: Service
    env: dict[str, str]
    secret: str          # a tenant API key
    model_path: Path
    workdir: Path


@asynccontextmanager
async def running_platform(prefix: str = "lorafleet-bench-", **env_overrides: str) -> AsyncIterator[BenchPlatform]:
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    databases = DatabaseFactory(await server_dsn(workdir / "pgdata"))
    dsn = await databases.create("lorafleet_bench")
    await migrate(dsn)
    model_path = prepare_smollm2(Path.home() / ".cache" / "lorafleet" / "models" / MODEL, progress=lambda _: None)
    env = dict(platform_env(dsn, model_path, workdir), **env_overrides)
    print("starting worker and gateway …", flush=True)
    worker = await asyncio.to_thread(start_worker, env, workdir)
    gateway = await asyncio.to_thread(start_gateway, env, workdir)
    try:
        connection = await asyncpg.connect(dsn)
        try:
            service = TenancyService(connection)
            key = await service.create_key((await service.create_tenant("bench")).id)
        finally:
            await connection.close()
        yield BenchPlatform(worker, gateway, env, key.secret, model_path, workdir)
    finally:
        gateway.stop()
        worker.stop()
        await databases.drop_all()


async def timed_completion_stream(http: httpx.AsyncClient, url: str, body: dict, headers: dict[str, str] | None = None,
                                  ) -> tuple[float, int]:
    """Stream ``/v1/completions``; (seconds to the first generated text, completion tokens from usage)."""
    started = time.perf_counter()
    first = None
    completion = 0
    async with http.stream("POST", url + "/v1/completions", json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices") and chunk["choices"][0].get("text"):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
    return first or 0.0, completion
