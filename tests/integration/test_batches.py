"""The Batch API on the real engine (issue 24): the official SDK end to end — every custom_id once, greedy
bodies equal to the same requests made synchronously, usage equal to the ledger, cost equal to the
discount rule to the pico-dollar — and a gateway killed (SIGKILL) while its dispatcher holds lines:
another gateway runs them again, and no line shows twice in the output or the ledger.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile

import openai
import pytest

from tests.helpers import eventually, expected_cost, set_price

pytestmark = pytest.mark.engine

PROMPT, COMPLETION, DISCOUNT_BPS = 100_003, 200_001, 5000  # µUSD per million tokens; half price


def _line(custom_id: str, model: str, question: str, max_tokens: int = 8) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "temperature": 0, "max_tokens": max_tokens,
                     "messages": [{"role": "user", "content": question}]}}


def _jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


async def _ended(sdk: openai.AsyncOpenAI, batch_id: str, timeout: float):
    return await eventually(lambda: sdk.batches.retrieve(batch_id),
                            lambda b: b.status in ("completed", "failed", "expired", "cancelled"), timeout=timeout,
                            interval=0.5, what=f"batch {batch_id} to end")


async def _output(sdk: openai.AsyncOpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in (await sdk.files.content(file_id)).content.splitlines()]


QUESTIONS = ["Name a colour.", "What is 2 + 2?", "Say hello.", "Name a fruit.", "What day follows Monday?",
             "Name an animal."]


async def test_a_batch_answers_as_the_synchronous_calls_do_at_the_discount(gateways, base_env, db, make_key,
                                                                            model_name, gateway):
    """Greedy decoding is the same only under the same conditions: the engine's numerics change with how
    many sequences run together, and a prefix-cache hit skips the prompt's computation. So the one
    dispatcher (the session's gateways run none) feeds one line at a time, and the synchronous calls are
    made by another tenant, whose cache salt shares no blocks with the batch's."""
    await set_price(gateway, base_env, model_name, PROMPT, COMPLETION, batch_discount_bps=DISCOUNT_BPS)
    one_at_a_time = gateways.start(LORAFLEET_BATCH_DISPATCH="true", LORAFLEET_BATCH_LINES_PER_WORKER="1")
    owner, other = await make_key(), await make_key()
    sync_sdk = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=other.secret, max_retries=0, timeout=300)
    async with sync_sdk, openai.AsyncOpenAI(base_url=f"{one_at_a_time.url}/v1", api_key=owner.secret, max_retries=0,
                                            timeout=300) as sdk:
        file = await sdk.files.create(file=("batch.jsonl", _jsonl(
            [_line(f"q-{i}", model_name, question) for i, question in enumerate(QUESTIONS)])), purpose="batch")
        batch = await sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                         completion_window="24h")
        done = await _ended(sdk, batch.id, timeout=240)
        assert done.status == "completed", done
        assert (done.request_counts.total, done.request_counts.completed) == (len(QUESTIONS), len(QUESTIONS))
        output = await _output(sdk, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(f"q-{i}" for i in range(len(QUESTIONS)))
        for line in output:
            question = QUESTIONS[int(line["custom_id"].split("-")[1])]
            sync = await sync_sdk.chat.completions.create(model=model_name, temperature=0, max_tokens=8,
                                                     messages=[{"role": "user", "content": question}])
            body = line["response"]["body"]
            assert body["choices"][0]["message"]["content"] == sync.choices[0].message.content, line["custom_id"]
            assert body["usage"]["prompt_tokens"] == sync.usage.prompt_tokens
            assert body["usage"]["completion_tokens"] == sync.usage.completion_tokens
    rows = await eventually(lambda: db.fetch("SELECT * FROM usage_ledger WHERE batch_id = $1", batch.id),
                            lambda found: len(found) == len(QUESTIONS), what="one ledger row per line")
    by_id = {row["request_id"]: row for row in rows}
    for line in output:
        row = by_id[line["response"]["request_id"]]
        usage = line["response"]["body"]["usage"]
        assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
        full = expected_cost(row["prompt_tokens"], row["completion_tokens"], PROMPT, COMPLETION,
                             cached_tokens=row["cached_prompt_tokens"])
        assert row["cost_pico_usd"] == (full * (10_000 - DISCOUNT_BPS) + 5_000) // 10_000
    assert done.usage.input_tokens == sum(row["prompt_tokens"] for row in rows)
    assert done.usage.output_tokens == sum(row["completion_tokens"] for row in rows)


async def test_a_gateway_killed_holding_lines_leaves_them_to_another_and_each_is_billed_once(
        gateway, gateways, db, make_key, model_name):  # noqa: ARG001 - gateway: the session's worker is up
    # A gateway with short line leases runs the batch, and is killed without any chance to clean up;
    # then a gateway is started again (the restart), and finishes it.
    doomed = gateways.start(LORAFLEET_BATCH_DISPATCH="true", LORAFLEET_BATCH_LINE_LEASE_SECONDS="3",
                            LORAFLEET_BATCH_LINES_PER_WORKER="6")
    owner = await make_key()
    count = 16
    async with openai.AsyncOpenAI(base_url=f"{doomed.url}/v1", api_key=owner.secret, max_retries=0) as sdk:
        file = await sdk.files.create(file=("batch.jsonl", _jsonl(
            [_line(f"k-{i}", model_name, f"Count from {i} to {i + 20}.", max_tokens=24) for i in range(count)])),
            purpose="batch")
        batch = await sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                         completion_window="24h")
    await eventually(lambda: db.fetchrow("SELECT b.status, b.errors, (SELECT count(*) FROM batch_lines l WHERE "
                                         "l.batch_id = b.id AND l.state = 'running') AS running, (SELECT count(*) "
                                         "FROM batch_lines l WHERE l.batch_id = b.id) AS lines FROM batches b "
                                         "WHERE b.id = $1", batch.id),
                     lambda row: row["running"] > 0, timeout=120, interval=0.1, what="lines running")
    doomed.stop(signal.SIGKILL)
    # What the dead gateway held: those lines can only be answered by running them again.
    held = {row["custom_id"] for row in await db.fetch(
        "SELECT custom_id FROM batch_lines WHERE batch_id = $1 AND state = 'running'", batch.id)}
    assert held, "the gateway died holding lines"
    restarted = gateways.start(LORAFLEET_BATCH_DISPATCH="true")
    async with openai.AsyncOpenAI(base_url=f"{restarted.url}/v1", api_key=owner.secret, max_retries=0) as sdk:
        done = await _ended(sdk, batch.id, timeout=400)
        assert done.status == "completed", done
        output = await _output(sdk, done.output_file_id)
        errors = await _output(sdk, done.error_file_id)
    assert errors == [] and sorted(line["custom_id"] for line in output) == sorted(f"k-{i}" for i in range(count))
    assert held <= {line["custom_id"] for line in output}, "the lines the dead gateway held were run again"
    rows = await eventually(lambda: db.fetch("SELECT request_id, count(*) FROM usage_ledger WHERE batch_id = $1 "
                                             "GROUP BY request_id", batch.id),
                            lambda found: len(found) >= count, what="the batch's ledger rows")
    assert {row["count"] for row in rows} == {1}, "no request id twice in the ledger"
    answered = {line["response"]["request_id"] for line in output}
    assert answered <= {row["request_id"] for row in rows}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorafleet.cli.main", *args], capture_output=True, text=True,
                          timeout=600, env=dict(env, LORAFLEET_DATA_DIR=tempfile.mkdtemp()))


async def test_batch_commands(gateway, gateways, base_env, make_key, model_name, tmp_path):  # noqa: ARG001
    """`lorafleet batches create --follow`, `list`, `show`, `download`, `cancel` against the real platform."""
    dispatching = gateways.start(LORAFLEET_BATCH_DISPATCH="true")
    key = await make_key()
    env = dict(base_env, LORAFLEET_BASE_URL=dispatching.url, LORAFLEET_API_KEY=key.secret)
    data = tmp_path / "questions.jsonl"
    data.write_bytes(_jsonl([_line(f"cli-{i}", model_name, question) for i, question in enumerate(QUESTIONS[:3])]))
    created = await asyncio.to_thread(_cli, env, "batches", "create", str(data), "--metadata", "team=search",
                                      "--follow", "--json")
    assert created.returncode == 0, (created.stdout, created.stderr[-2000:])
    batch = json.loads(created.stdout)
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 3
    assert batch["metadata"] == {"team": "search"}
    assert "uploading questions.jsonl" in created.stderr and f"{batch['id']}: completed" in created.stderr
    listed = await asyncio.to_thread(_cli, env, "batches", "list", "--json")
    assert [b["id"] for b in json.loads(listed.stdout)["data"]] == [batch["id"]]
    shown = await asyncio.to_thread(_cli, env, "batches", "show", batch["id"])
    assert shown.returncode == 0 and "completed" in shown.stdout and "3/3 done, 0 failed" in shown.stdout
    downloaded = await asyncio.to_thread(_cli, env, "batches", "download", batch["id"], "--out", str(tmp_path / "out"))
    assert downloaded.returncode == 0, downloaded.stderr
    output = [json.loads(line) for line in (tmp_path / "out" / f"{batch['id']}.output.jsonl").read_text().splitlines()]
    assert sorted(line["custom_id"] for line in output) == ["cli-0", "cli-1", "cli-2"]
    assert not (tmp_path / "out" / f"{batch['id']}.errors.jsonl").exists()
    refused = await asyncio.to_thread(_cli, env, "batches", "cancel", batch["id"], "--json")
    assert refused.returncode == 1 and json.loads(refused.stdout)["error"]["code"] == "batch_not_cancellable"
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"not json\n")
    failed = await asyncio.to_thread(_cli, env, "batches", "create", str(bad), "--follow")
    assert failed.returncode == 1 and "invalid_json_line: line 1: not valid JSON" in failed.stdout
    usage = await asyncio.to_thread(_cli, env, "batches", "create", str(data), "--metadata", "nokey")
    assert usage.returncode == 2 and "KEY=VALUE" in usage.stderr


async def test_real_answers_stay_within_their_bounds_and_the_real_vocabulary_is_checked(gateway, gateways, db,
                                                                                        make_key, model_name):  # noqa: ARG001
    """On the real engine (issue 28): answers with logprobs and echo are kept (each within the bound its line
    was given), the output files fit the room the batch held, and a line with a token id outside SmolLM2's
    vocabulary (its worker reported 49,152) is refused at validation, by line, before any worker call."""
    dispatching = gateways.start(LORAFLEET_BATCH_DISPATCH="true")
    owner = await make_key()
    heavy = [{"custom_id": "echo-logprobs", "method": "POST", "url": "/v1/completions",
              "body": {"model": model_name, "prompt": "Once upon a time", "max_tokens": 16, "logprobs": 20,
                       "echo": True, "prompt_logprobs": 5}},
             {"custom_id": "plain", "method": "POST", "url": "/v1/completions",
              "body": {"model": model_name, "prompt": "Hello", "max_tokens": 8}}]
    async with openai.AsyncOpenAI(base_url=f"{dispatching.url}/v1", api_key=owner.secret, max_retries=0) as sdk:
        file = await sdk.files.create(file=("heavy.jsonl", _jsonl(heavy)), purpose="batch")
        batch = await sdk.batches.create(input_file_id=file.id, endpoint="/v1/completions", completion_window="24h")
        bounds = await eventually(lambda: db.fetch("SELECT custom_id, answer_bound FROM batch_lines WHERE batch_id = $1",
                                                   batch.id), lambda rows: len(rows) == 2, what="the lines validated")
        reserved = await db.fetchval("SELECT output_reserved_bytes FROM batches WHERE id = $1", batch.id)
        done = await _ended(sdk, batch.id, timeout=240)
        assert done.status == "completed" and done.request_counts.completed == 2, done
        output_file = await sdk.files.retrieve(done.output_file_id)
        output = await _output(sdk, done.output_file_id)
        bad = [dict(heavy[1], custom_id="out-of-vocabulary",
                    body={**heavy[1]["body"], "stop_token_ids": [49152]})]
        refused_file = await sdk.files.create(file=("bad.jsonl", _jsonl(bad)), purpose="batch")
        refused = await sdk.batches.create(input_file_id=refused_file.id, endpoint="/v1/completions",
                                           completion_window="24h")
        refused = await _ended(sdk, refused.id, timeout=60)
    bound_of = {row["custom_id"]: row["answer_bound"] for row in bounds}
    for line in output:
        assert len(json.dumps(line["response"]["body"]).encode()) <= bound_of[line["custom_id"]]
    assert output_file.bytes <= reserved
    assert refused.status == "failed" and [(e.line, e.param) for e in refused.errors.data] == [(1, "body.stop_token_ids")]
