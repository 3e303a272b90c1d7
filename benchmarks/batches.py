"""Batches and cached tokens on the real engine: what a batch costs interactive latency, how fast it runs
against vLLM's own `run-batch`, and what a shared system prompt saves.

1. vLLM's `run_batch` (an offline process with its own engine, same model, same settings) over N lines,
   and over 1 line: its lines/s is (N − 1) / (time(N) − time(1)), so its engine start is not counted.
2. A platform of its own (embedded PostgreSQL, one worker, a gateway running no dispatcher) and, per
   dispatcher setting compared, a gateway that dispatches: the same N lines as a batch with no other
   traffic (lines/s from the batch's `in_progress_at` to its `completed_at`, finalization included);
3. then through that gateway, interactive p95 time to first token, M streamed chat requests one after
   another, without and then with a 2,000-line batch running (same worker); the batch is cancelled.
4. A chat workload with one long shared system prompt: the share of prompt tokens served from the
   prefix cache, and the cost with a cached-prompt price against the cost without one.

    PYTHONPATH=platform:billing:workers:tests/support .venv/bin/python benchmarks/batches.py [--lines 600] [--interactive 40] [--settings 4:1,64:1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import openai  # noqa: E402
from lorafleet.core.settings import WorkerSettings, load_settings  # noqa: E402
from lorafleet.devtools.bench import MODEL, publish, running_platform  # noqa: E402
from lorafleet.devtools.services import start_gateway  # noqa: E402
from lorafleet.models.prepare import prepare_smollm2  # noqa: E402

MAX_TOKENS = 16
BIG_BATCH = 2000
PROMPT, CACHED, COMPLETION = 150_000, 15_000, 600_000  # µUSD per million tokens (cached: a tenth)


def _request(i: int) -> dict:
    return {"model": MODEL, "temperature": 0, "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": f"Write one sentence about the number {i}."}]}


def _batch_file(path: Path, count: int, start: int = 0) -> Path:
    with open(path, "w") as out:
        for i in range(start, start + count):
            out.write(json.dumps({"custom_id": f"l-{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": _request(i)}) + "\n")
    return path


def _run_batch(lines: Path, model_path: Path, settings: WorkerSettings) -> float:
    """Seconds `vllm run_batch` takes over ``lines``, its engine start included."""
    out = lines.with_suffix(".out.jsonl")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(lines), "-o", str(out),
                    "--model", str(model_path), "--served-model-name", MODEL,
                    "--max-model-len", str(settings.max_model_len)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   # The worker's own KV cache size, so both engines run alike (vLLM's default takes far more).
                   env=dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(settings.kv_cache_gib)))
    elapsed = time.perf_counter() - started
    answered = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(line["response"]["status_code"] == 200 for line in answered), "run_batch failed lines"
    return elapsed


async def _ttft(http: httpx.AsyncClient, i: int) -> float:
    started = time.perf_counter()
    async with http.stream("POST", "/v1/chat/completions", json={**_request(10_000 + i), "stream": True}) as answer:
        answer.raise_for_status()
        async for line in answer.aiter_lines():
            if line.startswith("data: {") and json.loads(line[6:]).get("choices", [{}])[0].get("delta", {}).get(
                    "content"):
                return time.perf_counter() - started
    return time.perf_counter() - started


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 20 else max(values)


async def _interactive(url: str, secret: str, count: int) -> list[float]:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=300) as http:
        return [await _ttft(http, i) for i in range(count)]


async def _wait(sdk: openai.AsyncOpenAI, batch_id: str, until: tuple[str, ...], timeout: float = 3600):
    deadline = time.monotonic() + timeout
    while True:
        batch = await sdk.batches.retrieve(batch_id)
        if batch.status in until or time.monotonic() > deadline:
            return batch
        await asyncio.sleep(0.5)


async def _one_setting(bench, workdir: Path, lines: int, interactive: int, per_worker: int, busy: int) -> dict:
    """A dispatching gateway with these settings (the platform's own runs none): the N-line batch alone,
    then interactive TTFT without and with a big batch running, through that gateway."""
    # No minimum deferral: this measures how fast lines run once they may.
    gateway = await asyncio.to_thread(start_gateway, dict(bench.env, LORAFLEET_BATCH_DISPATCH="true",
                                                           LORAFLEET_BATCH_MIN_DELAY_SECONDS="0",
                                                           LORAFLEET_BATCH_LINES_PER_WORKER=str(per_worker),
                                                           LORAFLEET_BATCH_LINES_PER_WORKER_BUSY=str(busy)),
                                      workdir)
    try:
        url = gateway.url
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=bench.secret, max_retries=0, timeout=300) as sdk:
            print(f"{per_worker}/{busy} lines per worker: a batch of {lines} lines …", flush=True)
            file = await sdk.files.create(file=("n.jsonl", (workdir / "n.jsonl").read_bytes()), purpose="batch")
            batch = await sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                             completion_window="24h")
            done = await _wait(sdk, batch.id, ("completed", "failed", "expired", "cancelled"))
            assert done.status == "completed" and done.request_counts.completed == lines, done
            rate = lines / max(1e-9, done.completed_at - done.in_progress_at)
            await _interactive(url, bench.secret, 3)  # warm
            quiet = await _interactive(url, bench.secret, interactive)
            big = await sdk.files.create(file=("big.jsonl", _batch_file(workdir / "big.jsonl", BIG_BATCH, 20_000)
                                               .read_bytes()), purpose="batch")
            running = await sdk.batches.create(input_file_id=big.id, endpoint="/v1/chat/completions",
                                               completion_window="24h")
            while (await sdk.batches.retrieve(running.id)).request_counts.completed < 5:
                await asyncio.sleep(0.5)
            busy_ttft = await _interactive(url, bench.secret, interactive)
            during = await sdk.batches.retrieve(running.id)
            await sdk.batches.cancel(running.id)
            cancelled = await _wait(sdk, running.id, ("cancelled",))
    finally:
        gateway.stop()
    return {"per_worker": per_worker, "busy": busy, "rate": rate, "quiet": quiet, "busy_ttft": busy_ttft,
            "during": during.request_counts.completed, "billed": cancelled.request_counts.completed}


async def _cached_share(bench) -> tuple[int, int, float, float]:
    async with httpx.AsyncClient(base_url=bench.gateway.url, timeout=60,
                                 headers={"Authorization": f"Bearer {bench.env['LORAFLEET_ADMIN_TOKEN']}"}) as api:
        answer = await api.post("/admin/prices", json={
            "base_model": MODEL, "prompt_micro_usd_per_mtok": PROMPT, "completion_micro_usd_per_mtok": COMPLETION,
            "cached_prompt_micro_usd_per_mtok": CACHED})
        answer.raise_for_status()
    await asyncio.sleep(1.5)  # the gateway's catalog refresh
    system = ("You are the help desk of a harbour. " + " ".join(
        f"Rule {i}: ships of class {i} dock at pier {i % 7} and pay {i * 3} credits." for i in range(40)))
    prompt_tokens = cached_tokens = 0
    cost = without_cache = 0.0
    async with openai.AsyncOpenAI(base_url=bench.gateway.url + "/v1", api_key=bench.secret, max_retries=0,
                                  timeout=300) as sdk:
        for i in range(20):
            reply = await sdk.chat.completions.with_raw_response.create(
                model=MODEL, temperature=0, max_tokens=8,
                messages=[{"role": "system", "content": system},
                          {"role": "user", "content": f"Where does a class {i} ship dock?"}])
            parsed = reply.parse()
            details = parsed.usage.prompt_tokens_details
            cached_tokens += (details.cached_tokens or 0) if details else 0
            prompt_tokens += parsed.usage.prompt_tokens
            cost += float(reply.headers["x-lorafleet-cost-micro-usd"])
            without_cache += (parsed.usage.prompt_tokens * PROMPT + parsed.usage.completion_tokens * COMPLETION) / 1e6
    return prompt_tokens, cached_tokens, cost, without_cache


async def main(lines: int, interactive: int, settings_to_try: list[tuple[int, int]]) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="lorafleet-batch-bench-"))
    model_path = prepare_smollm2(Path.home() / ".cache" / "lorafleet" / "models" / MODEL, progress=lambda _: None)
    settings = load_settings(WorkerSettings, {})
    print(f"vLLM run_batch over {lines} lines and over 1 …", flush=True)
    reference_n = _run_batch(_batch_file(workdir / "n.jsonl", lines), model_path, settings)
    reference_1 = _run_batch(_batch_file(workdir / "one.jsonl", 1), model_path, settings)
    reference_rate = (lines - 1) / max(1e-9, reference_n - reference_1)

    async with running_platform("lorafleet-batch-bench-", LORAFLEET_BATCH_DISPATCH="false") as bench:
        results = [await _one_setting(bench, workdir, lines, interactive, per_worker, busy)
                   for per_worker, busy in settings_to_try]
        print("cached prompt tokens with a shared system prompt …", flush=True)
        prompt_tokens, cached_tokens, cost, without_cache = await _cached_share(bench)

    throughput = "\n".join(
        f"| LoraFleet batch, {r['per_worker']} lines in flight per worker (in_progress → completed) | {lines} | "
        f"{r['rate']:.2f} | **{r['rate'] / reference_rate:.2f}×** |" for r in results)
    latency = "\n".join(
        f"| {r['per_worker']} per worker, {r['busy']} while interactive | {statistics.median(r['quiet']) * 1000:.0f} / "
        f"{_p95(r['quiet']) * 1000:.0f} ms | {statistics.median(r['busy_ttft']) * 1000:.0f} / "
        f"{_p95(r['busy_ttft']) * 1000:.0f} ms | **{_p95(r['busy_ttft']) / _p95(r['quiet']):.2f}×** | {r['during']} |"
        for r in results)
    report = f"""# Batches and cached tokens

`benchmarks/batches.py` on {platform.machine()} ({platform.processor() or 'cpu'}), {MODEL}, one CPU worker
(KV cache {settings.kv_cache_gib} GiB, the same for `run_batch`), chat lines of {MAX_TOKENS} output tokens
(temperature 0), on a machine shared with other work. Every figure below is from one run.

## Batch throughput, no other traffic (target ≥ 0.8× `run_batch`)

vLLM's `run_batch` is an offline process with its own engine; its start is excluded: (N − 1) / (t(N) − t(1)),
t(N) = {reference_n:.1f} s, t(1) = {reference_1:.1f} s (the engine start varies by several seconds, so this
reference is rough).

| runner | lines | lines/s | against `run_batch` |
|---|---|---|---|
| vLLM `run_batch` (every line submitted at once) | {lines} | {reference_rate:.2f} | 1× |
{throughput}

## Interactive time to first token, with and without a batch (target ≤ 1.2×)

{interactive} streamed chat requests one after another through the dispatching gateway, before and while a
{BIG_BATCH}-line batch ran (then cancelled).

| dispatcher | no batch: median / p95 | batch running: median / p95 | p95 ratio | batch lines done meanwhile |
|---|---|---|---|---|
{latency}

## Cached prompt tokens, one shared system prompt

20 chat requests with the same system prompt and different questions, cached-prompt price a tenth of the
prompt price: {cached_tokens} of {prompt_tokens} prompt tokens served from the prefix cache
(**{100 * cached_tokens / max(1, prompt_tokens):.0f}%**); cost {cost:.2f} µUSD against {without_cache:.2f} µUSD
priced without the cache (**{100 * (1 - cost / max(1e-9, without_cache)):.0f}% less**).
"""
    publish("batches", report)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=600)
    parser.add_argument("--interactive", type=int, default=40)
    parser.add_argument("--settings", default="4:1,64:1",
                        help="Dispatcher settings to compare: LINES_PER_WORKER:LINES_PER_WORKER_BUSY, comma-separated.")
    arguments = parser.parse_args()
    tried = [tuple(int(n) for n in pair.split(":")) for pair in arguments.settings.split(",")]
    asyncio.run(main(arguments.lines, arguments.interactive, tried))  # type: ignore[arg-type]
