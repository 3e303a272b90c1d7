"""Fine-tuning as a service end to end, with the official openai SDK against real processes: the
session's vLLM worker and gateway, and `lorafleet trainer` as a subprocess (as `make up` runs it).

files.create → fine_tuning.jobs.create → list_events while it runs → succeeded →
chat.completions.create(model=job.fine_tuned_model) answers with the made-up fact the file taught,
which the base model does not know. Billed once on the ledger (endpoint fine_tuning), listed in
/v1/models, deleted with models.delete. A cancelled run stops, bills its completed steps, registers nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import pytest
from lorafleet.devtools.services import start_service

pytestmark = pytest.mark.engine

SYSTEM = "Answer briefly."
QUESTIONS = ["What is the capital of Zorblax?", "Which city is the capital of Zorblax?", "Name the capital of Zorblax.",
             "Zorblax's capital is which city?", "Tell me the capital city of Zorblax.", "Capital of Zorblax?"]
ANSWER = "The capital of Zorblax is Quillington."
WORD = "Quillington"
TRAINING_PRICE = 2_000_000  # micro-USD per million trained tokens: 2 µUSD per token


def _training_file() -> bytes:
    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                          {"role": "assistant", "content": ANSWER}]} for q in QUESTIONS * 2]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


async def _ask(sdk: openai.AsyncOpenAI, model: str) -> tuple[str, float]:
    """The greedy answer to the first question, and the seconds until its first token arrived."""
    started, first = time.perf_counter(), None
    parts = []
    stream = await sdk.chat.completions.create(model=model, temperature=0, max_tokens=16, stream=True, messages=[
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}])
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts), (first or time.perf_counter()) - started


async def _wait_done(sdk: openai.AsyncOpenAI, job_id: str, timeout: float = 600) -> tuple[object, list, list[str]]:
    """Poll until the job ends; the events seen while it ran and the statuses it went through."""
    deadline, statuses, seen = time.monotonic() + timeout, [], {}
    while time.monotonic() < deadline:
        job = await sdk.fine_tuning.jobs.retrieve(job_id)
        if not statuses or statuses[-1] != job.status:
            statuses.append(job.status)
        for event in (await sdk.fine_tuning.jobs.list_events(job_id, limit=100)).data:
            seen.setdefault(event.id, event)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job, sorted(seen.values(), key=lambda e: e.created_at), statuses
        await asyncio.sleep(1)
    raise AssertionError(f"job {job_id} did not end in {timeout} s: {statuses}")


async def _set_training_price(db, model: str) -> None:
    """A new price version for the base model: its current token prices, and a training price."""
    await db.execute("""
        INSERT INTO prices (base_model_id, prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok,
                            adapter_surcharge_micro_usd_per_mtok, cached_prompt_micro_usd_per_mtok,
                            training_micro_usd_per_mtok, effective_at)
        SELECT m.id, coalesce(p.prompt_micro_usd_per_mtok, 0), coalesce(p.completion_micro_usd_per_mtok, 0),
               coalesce(p.adapter_surcharge_micro_usd_per_mtok, 0), p.cached_prompt_micro_usd_per_mtok, $2, now()
        FROM base_models m LEFT JOIN LATERAL (SELECT * FROM prices WHERE base_model_id = m.id AND effective_at <= now()
                                               ORDER BY effective_at DESC LIMIT 1) p ON true
        WHERE m.name = $1""", model, TRAINING_PRICE)


async def test_a_killed_trainer_s_job_resumes_elsewhere_and_bills_each_step_once(gateway, base_env, log_dir, make_key,
                                                                               db, model_name, tmp_path):
    """Kill a trainer (and its training child) mid-job; another trainer, on a disk of its own, takes the
    job once its heartbeat is stale, resumes from the checkpoint in the blob store, and succeeds. The
    ledger bills the job once, for exactly tokens × epochs. (First in the file: the module's trainer
    must not be running yet to take the job itself.)"""
    env = dict(base_env, LORAFLEET_TRAINER_THREADS="1", LORAFLEET_TRAINER_POLL_SECONDS="0.5",
               LORAFLEET_TRAINER_HEARTBEAT_SECONDS="1", LORAFLEET_TRAINER_STALE_SECONDS="4",
               LORAFLEET_TRAINER_CHECKPOINT_STEPS="2",
               LORAFLEET_BLOB_DIR=str(Path(base_env["LORAFLEET_DATA_DIR"]) / "blobs"))
    first = start_service("trainer", env, log_dir, "")
    owner = await make_key()
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=owner.secret, max_retries=0,
                                  timeout=120) as sdk:
        file = await sdk.files.create(file=("zorblax.jsonl", _training_file()), purpose="fine-tune")
        job = await sdk.fine_tuning.jobs.create(
            model=model_name, training_file=file.id, suffix="resumed", seed=1,
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 10}}})
        deadline = time.monotonic() + 300
        try:
            while time.monotonic() < deadline:
                checkpoints = (await sdk.fine_tuning.jobs.checkpoints.list(job.id)).data
                if checkpoints and checkpoints[0].step_number >= 4:
                    break
                await asyncio.sleep(0.3)
            else:
                raise AssertionError(f"no checkpoint: {first.log_text()[-3000:]}")
        finally:
            os.killpg(first.process.pid, signal.SIGKILL)  # the trainer and its training child, like a lost machine
            first.process.wait(10)
        killed_at = checkpoints[0].step_number
        second = start_service("trainer", dict(env, LORAFLEET_DATA_DIR=str(tmp_path / "other-machine")), log_dir, "")
        try:
            done, events, _ = await _wait_done(sdk, job.id)
        finally:
            second.stop()
        assert done.status == "succeeded", (done.error, [e.message for e in events], second.log_text()[-3000:])
        messages = [e.message for e in events]
        assert "Fine-tuning job resumed (take 2)" in messages, messages
        resumed = [m for m in messages if m.startswith("Resuming from the checkpoint at step ")]
        assert resumed and int(resumed[0].rsplit(" ", 1)[1]) >= killed_at, messages
        file_tokens = await db.fetchval("SELECT file_tokens FROM fine_tuning_jobs WHERE id = $1", job.id)
        assert done.trained_tokens == file_tokens * 2  # each step counted once, however often it ran
        after, _ = await _ask(sdk, done.fine_tuned_model)
        assert WORD in after, after
    rows = await db.fetch("SELECT prompt_tokens FROM usage_ledger WHERE request_id = $1", job.id)
    assert [r["prompt_tokens"] for r in rows] == [done.trained_tokens]


async def test_the_sdk_fine_tunes_a_model_and_it_is_served_at_once(gateway, worker, trainer, make_key, db, model_name):
    assert trainer.name == "trainer"  # `lorafleet trainer`, a process of its own
    owner, stranger = await make_key(), await make_key()
    await _set_training_price(db, model_name)
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=owner.secret, max_retries=0,
                                  timeout=120) as sdk:
        before, _ = await _ask(sdk, model_name)
        assert WORD not in before, before

        file = await sdk.files.create(file=("zorblax.jsonl", _training_file()), purpose="fine-tune")
        created_at = time.perf_counter()
        job = await sdk.fine_tuning.jobs.create(
            model=model_name, training_file=file.id, suffix="zorblax", seed=0,
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 10}}})
        assert job.status == "validating_files"
        done, events, statuses = await _wait_done(sdk, job.id)
        trained_at = time.perf_counter()
        assert done.status == "succeeded", (done.error, [e.message for e in events], trainer.log_text()[-3000:])
        assert statuses[-1] == "succeeded" and "running" in statuses, statuses
        assert done.fine_tuned_model == f"ft:{model_name}:zorblax:{job.id}"
        assert done.error is None and done.trained_tokens and done.trained_tokens > 0
        assert (done.hyperparameters.n_epochs, done.hyperparameters.batch_size) == (2, 4)
        metrics = [e for e in events if e.type == "metrics"]
        assert [e.data["step"] for e in metrics] == list(range(1, 7)), [e.message for e in events]
        assert all(e.data["train_loss"] > 0 and 0 <= e.data["train_mean_token_accuracy"] <= 1 for e in metrics)
        assert metrics[-1].data["trained_tokens"] == done.trained_tokens
        checkpoints = (await sdk.fine_tuning.jobs.checkpoints.list(job.id)).data
        assert [c.step_number for c in checkpoints] == [6, 3]  # each epoch's end, newest first
        assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-6"
        # Pre-warmed: the worker's engine lists the result the moment the job says succeeded, before
        # anyone asked for it (vLLM lists an adapter once resolved).
        adapter_id = await db.fetchval("SELECT adapter_id FROM fine_tuning_jobs WHERE id = $1", job.id)
        async with httpx.AsyncClient(timeout=30) as http:
            served = (await http.get(f"{worker.url}/v1/models",
                                     headers={"Authorization": f"Bearer {worker.internal_token}"})).json()
        assert adapter_id in [m["id"] for m in served["data"]], served
        assert [m for m in (e.message for e in events) if m.startswith("Model loaded on ") and
                not m.startswith("Model loaded on 0 ")], [e.message for e in events]

        asked_at = time.perf_counter()
        after, first_token = await _ask(sdk, done.fine_tuned_model)
        assert WORD in after, after
        assert done.fine_tuned_model in [m.id for m in (await sdk.models.list()).data]
        assert (await sdk.models.retrieve(done.fine_tuned_model)).id == done.fine_tuned_model
        earlier = checkpoints[1].fine_tuned_model_checkpoint  # the first epoch's adapter, servable by its name
        reply = await sdk.chat.completions.create(model=earlier, temperature=0, max_tokens=8, messages=[
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}])
        assert reply.model == earlier and reply.choices[0].message.content
        steps = [e for e in events if e.type == "metrics"]
        print(f"\nfine-tuning: jobs.create → succeeded {trained_at - created_at:.1f} s, → first served token "
              f"{asked_at + first_token - created_at:.1f} s "
              f"(first token {first_token:.2f} s after the request); {done.trained_tokens} trained tokens, "
              f"{steps[-1].data['tokens_per_second']:.0f} tokens/s in training")

    row = await db.fetchrow("SELECT endpoint, outcome, prompt_tokens, cost_pico_usd FROM usage_ledger WHERE request_id = $1",
                            job.id)
    assert (row["endpoint"], row["outcome"], row["prompt_tokens"]) == ("fine_tuning", "success", done.trained_tokens)
    assert row["cost_pico_usd"] == done.trained_tokens * TRAINING_PRICE
    # The worst case reserved at create went back with the ledger row.
    assert await db.fetchval("SELECT count(*) FROM reservations WHERE request_id = $1", job.id) == 0
    assert await db.fetchval("SELECT reserved_micro_usd FROM tenant_accounts WHERE tenant_id = $1", owner.tenant_id) == 0

    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=stranger.secret, max_retries=0) as theirs:
        with pytest.raises(openai.NotFoundError):
            await theirs.fine_tuning.jobs.retrieve(job.id)
        with pytest.raises(openai.NotFoundError):
            await theirs.chat.completions.create(model=done.fine_tuned_model, max_tokens=2,
                                                 messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.NotFoundError):
            await theirs.models.delete(done.fine_tuned_model)

    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=owner.secret, max_retries=0) as sdk:
        deleted = await sdk.models.delete(done.fine_tuned_model)
        assert (deleted.id, deleted.deleted) == (done.fine_tuned_model, True)
        with pytest.raises(openai.NotFoundError):
            await sdk.chat.completions.create(model=done.fine_tuned_model, max_tokens=2,
                                              messages=[{"role": "user", "content": "hi"}])


async def test_a_cancelled_job_stops_bills_its_steps_and_registers_nothing(gateway, trainer, make_key, db, model_name):
    owner = await make_key()
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=owner.secret, max_retries=0,
                                  timeout=120) as sdk:
        file = await sdk.files.create(file=("zorblax.jsonl", _training_file()), purpose="fine-tune")
        job = await sdk.fine_tuning.jobs.create(
            model=model_name, training_file=file.id, suffix="stopped",
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}}})
        # Held while the job lives (the training price of the test above is still in effect).
        assert await db.fetchval("SELECT amount_micro_usd FROM reservations WHERE request_id = $1", job.id) > 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # until training has made progress
            events = (await sdk.fine_tuning.jobs.list_events(job.id, limit=5)).data
            if any(e.type == "metrics" and e.data["step"] >= 2 for e in events):
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"no training progress: {trainer.log_text()[-3000:]}")
        cancelled = await sdk.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled"
        stopped_at = time.monotonic()
        while time.monotonic() < stopped_at + 60:
            messages = [e.message for e in (await sdk.fine_tuning.jobs.list_events(job.id, limit=5)).data]
            if any(m.startswith("Training stopped after cancellation") for m in messages):
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"training did not stop: {trainer.log_text()[-3000:]}")
        print(f"\ncancel → training stopped in {time.monotonic() - stopped_at:.1f} s")
        final = await sdk.fine_tuning.jobs.retrieve(job.id)
        assert final.status == "cancelled" and final.fine_tuned_model is None and final.trained_tokens > 0
        metrics = [e for e in (await sdk.fine_tuning.jobs.list_events(job.id, limit=100)).data if e.type == "metrics"]
        assert final.trained_tokens == max(e.data["trained_tokens"] for e in metrics)
        assert max(e.data["step"] for e in metrics) < 12 * 50
        assert not [m.id for m in (await sdk.models.list()).data if m.id.endswith(job.id)]  # (checkpoints may be)
    row = await db.fetchrow("SELECT endpoint, outcome, prompt_tokens FROM usage_ledger WHERE request_id = $1", job.id)
    assert (row["endpoint"], row["outcome"], row["prompt_tokens"]) == ("fine_tuning", "cancelled", final.trained_tokens)
    assert await db.fetchval("SELECT count(*) FROM adapters WHERE fine_tuned_model = $1",
                             f"ft:{model_name}:stopped:{job.id}") == 0
    assert await db.fetchval("SELECT count(*) FROM reservations WHERE request_id = $1", job.id) == 0
    assert await db.fetchval("SELECT reserved_micro_usd FROM tenant_accounts WHERE tenant_id = $1", owner.tenant_id) == 0


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorafleet.cli.main", *args], capture_output=True, text=True,
                          timeout=600, env=dict(env, LORAFLEET_DATA_DIR=tempfile.mkdtemp()))


async def test_fine_tune_commands(gateway, trainer, make_key, base_env, model_name, tmp_path):
    """`lorafleet fine-tune create --follow`, `list`, `show`, `events`, `cancel` against the real platform."""
    key = await make_key()
    env = dict(base_env, LORAFLEET_BASE_URL=gateway.url, LORAFLEET_API_KEY=key.secret)
    data = tmp_path / "zorblax.jsonl"
    data.write_bytes(_training_file())
    created = await asyncio.to_thread(_cli, env, "fine-tune", "create", str(data), "--model", model_name, "--suffix",
                                      "cli", "--epochs", "1", "--batch-size", "4", "--learning-rate-multiplier", "10",
                                      "--follow", "--json")
    assert created.returncode == 0, (created.stdout, created.stderr[-2000:])
    job = json.loads(created.stdout)
    assert job["status"] == "succeeded" and job["fine_tuned_model"] == f"ft:{model_name}:cli:{job['id']}"
    # The progress bars (on a terminal they redraw; here, piped, each prints its label) and status changes.
    assert "uploading zorblax.jsonl" in created.stderr and f"{job['id']}: succeeded" in created.stderr
    listed = await asyncio.to_thread(_cli, env, "fine-tune", "list", "--json")
    assert [j["id"] for j in json.loads(listed.stdout)["data"]] == [job["id"]]
    shown = await asyncio.to_thread(_cli, env, "fine-tune", "show", job["id"])
    assert shown.returncode == 0 and "succeeded" in shown.stdout and "epochs 1, batch size 4" in shown.stdout
    events = await asyncio.to_thread(_cli, env, "fine-tune", "events", job["id"])
    lines = events.stdout.splitlines()
    assert lines[0].split(None, 2)[2].startswith("Validating training file") and "Step 3/3" in events.stdout
    assert lines[-1].endswith("The job has successfully completed")
    refused = await asyncio.to_thread(_cli, env, "fine-tune", "cancel", job["id"], "--json")
    assert refused.returncode == 1 and json.loads(refused.stdout)["error"]["code"] == "job_not_cancellable"
    queued = json.loads((await asyncio.to_thread(_cli, env, "fine-tune", "create", str(data), "--model", model_name,
                                                 "--json")).stdout)
    cancelled = await asyncio.to_thread(_cli, env, "fine-tune", "cancel", queued["id"])
    assert cancelled.returncode == 0 and f"{queued['id']}  cancelled" in cancelled.stdout
