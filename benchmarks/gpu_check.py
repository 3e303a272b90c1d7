"""The GPU check: what a first machine with one NVIDIA GPU must show, in under 10 minutes, one report.

Run it through ``benchmarks/gpu_check.sh`` (installs with ``ENGINE=gpu``, then runs this). It
starts its own database, one worker and a gateway (``running_platform``), and measures:

1. **Correctness**: greedy outputs of PEFT adapters served in mixed batches (base and several
   adapters at once, more adapters than ``max_loras`` slots, two rounds so slots are reused)
   against HF transformers + PEFT on the same weights, in float32.
2. **Throughput**: output tokens/s of concurrent streams over 1 adapter vs 64 distinct adapters.
3. **Warm adapter TTFT** against the base model's, one request at a time, interleaved.
4. **Gateway ÷ direct**: the same streams through the gateway and straight to the worker.

Every phase is a function over URLs and keys, so the test suite runs each of them on this CPU
machine against its session worker (``tests/integration/test_gpu_check.py``); only the GPU itself
is new when this first meets one.

    .venv/bin/python benchmarks/gpu_check.py [--device cuda|cpu] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests' adapter builders and HF reference

from lorafleet.devtools.bench import publish, running_platform, timed_completion_stream  # noqa: E402

PROMPTS = [[1, 502, 1234, 77, 900], [1, 3000, 42, 42, 12, 8000, 5]]


@dataclass(frozen=True)
class Target:
    url: str
    headers: dict[str, str]


def gpu_description(device: str) -> str:
    """The accelerator this check runs on; refuses to pretend when asked for a GPU that is not there."""
    import torch

    if device == "cpu":
        return f"CPU only ({platform.processor() or platform.machine()})"
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible to torch (nvidia-smi? ENGINE=gpu install?); "
                         "use --device cpu to rehearse the check on a CPU machine")
    properties = torch.cuda.get_device_properties(0)
    return f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"


async def upload_adapter(http: httpx.AsyncClient, name: str, folder: Path, base_model: str) -> None:
    files = [("file", (path.name, path.read_bytes())) for path in sorted(folder.iterdir()) if path.is_file()]
    response = await http.post("/v1/adapters", data={"name": name, "base_model": base_model}, files=files)
    if response.status_code != 201:
        raise RuntimeError(f"upload of {name} failed: {response.status_code} {response.text[:300]}")


async def greedy_ids(http: httpx.AsyncClient, model: str, prompt: list[int], max_tokens: int) -> list[int]:
    response = await http.post("/v1/completions", json={
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
        "return_token_ids": True})
    response.raise_for_status()
    return response.json()["choices"][0]["token_ids"]


async def check_correctness(gateway: Target, model: str, model_path: Path, workdir: Path, *, adapters: int = 6,
                            max_tokens: int = 8, prefix: str = "gpucheck") -> dict:
    """Served greedy ids vs HF+PEFT for the base model and ``adapters`` PEFT adapters in mixed batches."""
    from tests.tiny_llama import build_peft_adapter, reference_greedy

    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.headers, timeout=600) as http:
        folders = {}
        for seed in range(adapters):
            folder = await asyncio.to_thread(build_peft_adapter, model_path, workdir / f"{prefix}-peft{seed}", seed)
            await upload_adapter(http, f"{prefix}-{seed}", folder, model)
            folders[f"{prefix}-{seed}"] = folder
        expected = {}
        for index, prompt in enumerate(PROMPTS):
            expected[(model, index)] = await asyncio.to_thread(reference_greedy, model_path, None, prompt, max_tokens)
            for name, folder in folders.items():
                expected[(name, index)] = await asyncio.to_thread(reference_greedy, model_path, folder, prompt,
                                                                  max_tokens)
        compared = matched = 0
        mismatches = []
        for _ in range(2):  # the second round reuses slots the first filled
            jobs = list(expected) + [(model, index) for index in range(len(PROMPTS))] * 2
            results = await asyncio.gather(*(greedy_ids(http, name, PROMPTS[i], max_tokens) for name, i in jobs))
            for (name, index), tokens in zip(jobs, results, strict=True):
                compared += 1
                if tokens == expected[(name, index)]:
                    matched += 1
                elif len(mismatches) < 5:
                    mismatches.append(f"{name} prompt {index}: served {tokens} vs HF+PEFT {expected[(name, index)]}")
    distinct = len({tuple(v) for v in expected.values()})
    return {"compared": compared, "matched": matched, "distinct_references": distinct,
            "references": len(expected), "mismatches": mismatches}


async def stream_tokens_per_second(target: Target, models: list[str], streams: int, tokens: int) -> tuple[float, list[float]]:
    """Output tokens/s of ``streams`` concurrent streams spread round-robin over ``models``; and TTFTs."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=streams)) as http:
        started = time.perf_counter()
        results = await asyncio.gather(*(timed_completion_stream(http, target.url, {
            "model": models[i % len(models)], "prompt": "The history of the printing press", "max_tokens": tokens,
            "ignore_eos": True, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}},
            target.headers) for i in range(streams)))
        seconds = time.perf_counter() - started
    return sum(completion for _, completion in results) / seconds, [ttft for ttft, _ in results]


async def check_throughput(gateway: Target, model: str, arch_path: Path, workdir: Path, *, distinct: int = 64,
                           streams: int = 64, tokens: int = 64, prefix: str = "gpuload") -> dict:
    """Tokens/s over 1 adapter vs ``distinct`` adapters (random rank-8 weights on every projection)."""
    from lorafleet.adapters.architecture import model_architecture

    from tests.adapter_factory import lora_config, write_adapter
    from tests.tiny_llama import TARGETS

    arch = model_architecture(arch_path)
    names = []
    async with httpx.AsyncClient(base_url=gateway.url, headers=gateway.headers, timeout=600) as http:
        for index in range(distinct):
            folder = write_adapter(workdir / f"{prefix}-{index}", arch=arch, rank=8, modules=TARGETS, seed=5000 + index,
                                   config=lora_config(8, TARGETS, base=model))
            await upload_adapter(http, f"{prefix}-{index}", folder, model)
            names.append(f"{prefix}-{index}")
    results = {}
    for label, models in (("one adapter", names[:1]), (f"{distinct} adapters", names)):
        await stream_tokens_per_second(gateway, models, min(streams, len(models) * 2), 4)  # warm: load them
        results[label], _ = await stream_tokens_per_second(gateway, models, streams, tokens)
    results["base"], _ = await stream_tokens_per_second(gateway, [model], streams, tokens)
    return results


async def check_ttft(gateway: Target, model: str, adapter: str, *, rounds: int = 10) -> dict:
    """TTFT p50 of a warm adapter and of the base model, one request at a time, interleaved."""
    samples: dict[str, list[float]] = {model: [], adapter: []}
    await stream_tokens_per_second(gateway, [adapter], 1, 1)  # warm it
    for _ in range(rounds):
        for name in (model, adapter):
            _, ttfts = await stream_tokens_per_second(gateway, [name], 1, 1)
            samples[name].extend(ttfts)
    return {"base_ms": statistics.median(samples[model]) * 1000, "adapter_ms": statistics.median(samples[adapter]) * 1000}


async def check_gateway_vs_direct(gateway: Target, direct: Target, model: str, *, streams: int = 16,
                                  tokens: int = 64, rounds: int = 2) -> dict:
    totals = {"direct": 0.0, "gateway": 0.0}
    for index in range(rounds):
        order = ("direct", "gateway") if index % 2 == 0 else ("gateway", "direct")
        for name in order:
            rate, _ = await stream_tokens_per_second(direct if name == "direct" else gateway, [model], streams, tokens)
            totals[name] += rate / rounds
    return {**totals, "ratio": totals["gateway"] / totals["direct"]}


def render(device: str, correctness: dict, throughput: dict, ttft: dict, versus: dict, seconds: float) -> str:
    first, many = list(throughput)[:2]
    lines = [
        "# GPU check", "",
        f"Device: {device}. Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`; took {seconds:.0f} s.", "",
        "| check | result |", "|---|---|",
        f"| adapters vs HF+PEFT, mixed batches | {correctness['matched']}/{correctness['compared']} greedy sequences "
        f"identical ({correctness['distinct_references']} distinct references of {correctness['references']}) |",
        f"| output tok/s, {first} | {throughput[first]:.0f} |",
        f"| output tok/s, {many} | {throughput[many]:.0f} ({throughput[many] / throughput[first]:.2f}× of one) |",
        f"| output tok/s, base model | {throughput['base']:.0f} |",
        f"| warm adapter TTFT p50 vs base | {ttft['adapter_ms']:.1f} ms vs {ttft['base_ms']:.1f} ms |",
        f"| gateway ÷ direct, output tok/s | {versus['gateway']:.0f} / {versus['direct']:.0f} = {versus['ratio']:.3f} |",
        "",
    ]
    if correctness["mismatches"]:
        lines += ["Mismatches (first five):", "", *(f"- {m}" for m in correctness["mismatches"]), ""]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="small counts (a rehearsal on CPU)")
    args = parser.parse_args()
    device = gpu_description(args.device)
    started = time.perf_counter()
    scale = {"distinct": 8, "streams": 8, "tokens": 16} if args.quick else {"distinct": 64, "streams": 64, "tokens": 64}
    # float32 so greedy ids can equal HF's float32 reference exactly.
    async with running_platform("lorafleet-gpu-check-", LORAFLEET_ENGINE_EXTRA_ARGS="--dtype float32") as bench:
        model = bench.model_path.name
        gateway = Target(bench.gateway.url, {"Authorization": f"Bearer {bench.secret}"})
        direct = Target(bench.worker.url, {"Authorization": f"Bearer {bench.env['LORAFLEET_INTERNAL_TOKEN']}"})
        print("1/4 adapters against HF+PEFT …", flush=True)
        correctness = await check_correctness(gateway, model, bench.model_path, bench.workdir)
        print("2/4 throughput, 1 vs many adapters …", flush=True)
        throughput = await check_throughput(gateway, model, bench.model_path, bench.workdir, **scale)
        print("3/4 warm adapter TTFT …", flush=True)
        ttft = await check_ttft(gateway, model, "gpucheck-0")
        print("4/4 gateway vs direct …", flush=True)
        versus = await check_gateway_vs_direct(gateway, direct, model, streams=scale["streams"], tokens=scale["tokens"])
    publish("gpu_check" if args.device == "cuda" else "gpu_check_cpu_rehearsal",
            render(device, correctness, throughput, ttft, versus, time.perf_counter() - started))


if __name__ == "__main__":
    asyncio.run(main())
