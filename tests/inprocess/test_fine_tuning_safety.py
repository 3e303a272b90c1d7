"""Issue 28, findings 1-4, against the real gateway and PostgreSQL with a real trainer training a tiny random
Llama (SmolLM2's tokenizer and template, 2 layers: a step takes milliseconds): every ending after training
bills what was trained, with its outcome; a rank the workers cannot serve is refused at create; results
are registered under names no upload can take; a training child past its memory limit fails its job, not
the host; every ending leaves no bytes behind (the data dir and the blob store are counted before and
after); a validation file is bounded, reserved and billed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import msgspec
import openai
import pytest
from lorafleet.adapters.architecture import model_architecture
from lorafleet.core import ids
from lorafleet.core.settings import TrainerSettings, load_settings
from lorafleet.db import queries
from lorafleet.trainer.runner import Trainer

from tests.helpers import eventually
from tests.inprocess.conftest import STUB_MODEL
from tests.inprocess.test_fine_tuning_jobs import _jsonl, _prepaid, _reserved, _sdk
from tests.memory_hogs import all_at_once, growing
from tests.tiny_llama import build_tiny_llama

ROWS = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{2 * i}."}]} for i in range(12)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, model_path) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", model_path)


@pytest.fixture
async def tiny_base(platform, db, tiny_model) -> tuple[str, str]:
    """A base model shaped like the tiny Llama (so its results validate and register), no worker running it."""
    name = tiny_model.name  # what the trained adapters' base_model_name_or_path says (as SmolLM2's do in production)
    architecture = msgspec.to_builtins(model_architecture(tiny_model))
    row = await db.fetchrow(queries.upsert_base_model, ids.base_model_id(), name, 2048, architecture, 16, "generate")
    catalog = platform.app.state.services.catalog
    while name not in {model.name for model in catalog.all()}:
        await asyncio.sleep(0.05)
    return name, row["id"]


@pytest.fixture
async def price(db, tiny_base) -> int:
    """1 USD per million trained tokens for the tiny base model."""
    await db.execute("INSERT INTO prices (base_model_id, prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok, "
                     "adapter_surcharge_micro_usd_per_mtok, training_micro_usd_per_mtok, effective_at) "
                     "VALUES ($1, 0, 0, 0, 1000000, now())", tiny_base[1])
    yield 1_000_000
    await db.execute("DELETE FROM prices WHERE base_model_id = $1", tiny_base[1])


@pytest.fixture
def make_trainer(platform, db, tiny_model, tiny_base, tmp_path):
    def make(**env: str) -> Trainer:
        settings = load_settings(TrainerSettings, {
            "LORAFLEET_DATABASE_URL": "postgresql://unused/unused", "LORAFLEET_MODEL_NAME": tiny_base[0],
            "LORAFLEET_MODEL_PATH": str(tiny_model), "LORAFLEET_DATA_DIR": str(tmp_path / "trainer"),
            "LORAFLEET_BLOB_DIR": str(platform.app.state.services.settings.resolved_blob_dir),
            "LORAFLEET_TRAINER_STALE_SECONDS": "30", "LORAFLEET_TRAINER_HEARTBEAT_SECONDS": "0.2",
            "LORAFLEET_TRAINER_THREADS": "1", **env})
        runner = Trainer(settings, db)
        runner.base_model_id, runner.base_model = tiny_base[1], tiny_base[0]
        return runner
    return make


def _bytes_under(*roots: Path) -> dict[str, int]:
    """Every file's bytes under the roots (a dict: a failure shows what was left behind)."""
    return {str(path): path.stat().st_size for root in roots if root.exists() for path in root.rglob("*")
            if path.is_file()}


async def _queued_job(platform, tenant, trainer: Trainer, rows=ROWS, **body) -> str:
    async with _sdk(platform.url, tenant) as sdk:
        file = await sdk.files.create(file=("t.jsonl", _jsonl(rows)), purpose="fine-tune")
        job = await sdk.fine_tuning.jobs.create(model=trainer.base_model, training_file=file.id, suffix="safe", **body)
    while await trainer.validate_next():
        pass
    async with _sdk(platform.url, tenant) as sdk:
        queued = await sdk.fine_tuning.jobs.retrieve(job.id)
    assert queued.status == "queued", queued
    return job.id


async def _job(db, job_id: str):
    return await db.fetchrow("SELECT * FROM fine_tuning_jobs WHERE id = $1", job_id)


async def _ledger(db, job_id: str):
    return await db.fetchrow("SELECT outcome, prompt_tokens, cost_pico_usd FROM usage_ledger WHERE request_id = $1",
                             job_id)


# ---- finding 1: training for free ------------------------------------------------------------------------

async def test_a_rank_the_workers_cannot_serve_is_refused_at_create(platform, tenant):
    """lora_r 17-64 was accepted, trained in full, refused at registration (workers allow 16) and billed 0."""
    async with _sdk(platform.url, tenant) as sdk:
        file = await sdk.files.create(file=("t.jsonl", _jsonl(ROWS)), purpose="fine-tune")
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        for body in ({"hyperparameters": {"lora_r": 17}},
                     {"method": {"type": "supervised", "supervised": {"hyperparameters": {"lora_r": 64}}}}):
            answer = await http.post("/v1/fine_tuning/jobs", json={"model": STUB_MODEL, "training_file": file.id, **body})
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["param"].endswith("lora_r") and "16" in answer.json()["error"]["message"]
        fits = await http.post("/v1/fine_tuning/jobs", json={"model": STUB_MODEL, "training_file": file.id,
                                                              "hyperparameters": {"lora_r": 16}})
        assert fits.status_code == 200, fits.text
        await http.post(f"/v1/fine_tuning/jobs/{fits.json()['id']}/cancel")


async def test_an_adapter_named_like_the_job_cannot_make_its_training_free(platform, tenant, db, make_trainer,
                                                                           price, tmp_path):
    """The attack: upload an adapter named like your own job id while it trains; the result's registration
    then failed with `conflict` after 15 steps, the job billed 0 while its checkpoint served the result.
    Results and checkpoints are now registered under their ft: names (no upload can take one), so the job
    succeeds, and it is billed with the outcome success."""
    from tests.adapter_factory import lora_config, write_adapter

    await _prepaid(platform, tenant, 10_000_000)
    trainer = make_trainer(LORAFLEET_TRAINER_CHECKPOINT_STEPS="2")
    job_id = await _queued_job(platform, tenant, trainer, hyperparameters={"n_epochs": 1, "batch_size": 3})
    folder = write_adapter(tmp_path / "upload" / "parts", arch=model_architecture(trainer.model_path),
                           config=lora_config(8, ["q_proj", "v_proj"], base=trainer.base_model))
    squatter = await trainer.adapters.create(tenant.tenant_id, job_id, trainer.base_model,
                                             [(p.name, p) for p in sorted(folder.iterdir())], tmp_path / "upload")
    assert squatter.name == job_id
    assert await trainer.train_next()
    job = await _job(db, job_id)
    assert (job["status"], job["error"]) == ("succeeded", None), job["error"]
    names = {r["name"] for r in await db.fetch("SELECT name FROM adapters WHERE tenant_id = $1 AND status <> 'deleted'",
                                               tenant.tenant_id)}
    assert f"ft:{trainer.base_model}:safe:{job_id}" in names and job_id in names
    assert all(name.startswith("ft:") for name in names - {job_id}), names
    row = await _ledger(db, job_id)
    assert (row["outcome"], row["prompt_tokens"]) == ("success", job["trained_tokens"]) and job["trained_tokens"] > 0
    assert row["cost_pico_usd"] == job["trained_tokens"] * price
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:  # the upload route refuses ft:
        taken = await http.post("/v1/adapters", data={"name": f"ft:{trainer.base_model}:x:{job_id}"},
                                files=[(p.name, (p.name, p.read_bytes())) for p in sorted(folder.iterdir())])
    assert taken.status_code == 400 and taken.json()["error"]["param"] == "name", taken.text


# ---- findings 1 and 3: a failure after training is billed, and every ending leaves no bytes -----------------

async def test_a_failed_and_a_cancelled_job_bill_their_steps_and_leave_no_bytes(platform, tenant, db, make_trainer,
                                                                                price):
    """A failure after every step ran (here: the result cannot be registered, the tenant's adapter bytes
    being full) billed 0 and left the trainer's folder and the checkpoint blobs on disk forever. Now it is
    billed what it trained (outcome failed), and the data dir and blob store hold what they held before;
    so does a cancelled job (outcome cancelled). While a job trains, the trainer keeps no copy of the
    tenant's file (a DELETE /v1/files leaves no copy behind)."""
    await _prepaid(platform, tenant, 10_000_000)
    trainer = make_trainer(LORAFLEET_TRAINER_CHECKPOINT_STEPS="2", LORAFLEET_TENANT_MAX_ADAPTER_BYTES="1")
    blobs = platform.app.state.services.settings.resolved_blob_dir
    failing = await _queued_job(platform, tenant, trainer, hyperparameters={"n_epochs": 2, "batch_size": 2})
    before = _bytes_under(trainer.settings.data_path, blobs)
    assert await trainer.train_next()
    job = await _job(db, failing)
    assert job["status"] == "failed" and job["trained_tokens"] > 0, (job["status"], job["error"])
    assert await db.fetchval("SELECT count(*) FROM fine_tuning_checkpoints WHERE job_id = $1", failing) >= 2
    row = await _ledger(db, failing)
    assert (row["outcome"], row["prompt_tokens"]) == ("failed", job["trained_tokens"])
    assert row["cost_pico_usd"] == job["trained_tokens"] * price
    assert _bytes_under(trainer.settings.data_path, blobs) == before
    assert not (trainer.root / failing).exists()

    trainer = make_trainer(LORAFLEET_TRAINER_CHECKPOINT_STEPS="2")
    cancelled = await _queued_job(platform, tenant, trainer, hyperparameters={"n_epochs": 50, "batch_size": 1})
    before = _bytes_under(trainer.settings.data_path, blobs)
    training = asyncio.create_task(trainer.train_next())
    await eventually(lambda: db.fetchval("SELECT count(*) FROM fine_tuning_checkpoints WHERE job_id = $1", cancelled),
                     lambda n: n >= 2, timeout=120, what="two checkpoints")
    assert list(trainer.root.rglob("*.jsonl")) == []  # the child holds the examples; no copy of the file is left
    assert await db.fetchval("SELECT count(*) FROM fine_tuning_checkpoints WHERE job_id = $1 AND blob_live",
                             cancelled) == 1  # only the latest checkpoint keeps its resume state
    async with _sdk(platform.url, tenant) as sdk:
        await sdk.fine_tuning.jobs.cancel(cancelled)
    assert await asyncio.wait_for(training, 60)
    job = await _job(db, cancelled)
    row = await _ledger(db, cancelled)
    assert job["status"] == "cancelled" and job["trained_tokens"] > 0
    assert (row["outcome"], row["prompt_tokens"]) == ("cancelled", job["trained_tokens"])
    # What stays is what the tenant keeps and was billed for: its checkpoints registered as ft: adapters
    # (counted in its adapter quota), nothing else.
    kept = {str(blobs / r["sha256"][:2] / r["sha256"]): r["size_bytes"] for r in await db.fetch(
        "SELECT sha256, size_bytes FROM adapters WHERE tenant_id = $1 AND status = 'ready' AND fine_tuned_model LIKE $2",
        tenant.tenant_id, f"ft:%:{cancelled}:ckpt-step-%")}
    assert kept and _bytes_under(trainer.settings.data_path, blobs) == before | kept
    assert await _reserved(db, tenant) == (0, 0, [])


async def test_checkpoints_count_against_the_tenants_checkpoint_bytes(platform, tenant, db, make_trainer):
    trainer = make_trainer(LORAFLEET_TRAINER_CHECKPOINT_STEPS="1", LORAFLEET_TENANT_MAX_CHECKPOINT_BYTES="1024")
    job_id = await _queued_job(platform, tenant, trainer, hyperparameters={"n_epochs": 1, "batch_size": 2})
    assert await trainer.train_next()
    job = await _job(db, job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "checkpoint_quota_exceeded", job["error"]
    assert not (trainer.root / job_id).exists()


# ---- finding 2: the memory limit fails the job, never the host -----------------------------------------------

@pytest.mark.parametrize("hog, env", [
    (growing, {"LORAFLEET_TRAINER_MAX_MEMORY_BYTES": str(512 << 20)}),  # the resident-memory watchdog
    (all_at_once, {"LORAFLEET_TRAINER_MAX_MEMORY_BYTES": str(1 << 30),  # RLIMIT_AS
                   "LORAFLEET_TRAINER_ADDRESS_SLACK_BYTES": str(3 << 30)}),
])
async def test_a_training_child_past_its_memory_limit_fails_the_job_not_the_host(platform, tenant, db, make_trainer,
                                                                                 hog, env):
    job_id = await _queued_job(platform, tenant, make_trainer(), hyperparameters={"n_epochs": 1})
    trainer = make_trainer(**env)  # below what the tiny model is estimated to need: only the child is checked here
    trainer.child_target = hog
    assert await trainer.train_next()
    job = await _job(db, job_id)
    assert (job["status"], job["error"]["code"]) == ("failed", "training_out_of_memory"), job["error"]
    assert "memory" in job["error"]["message"]
    os.kill(os.getpid(), 0)  # this process (the trainer) lives on
    assert await db.fetchval("SELECT 1") == 1  # and so does PostgreSQL


async def test_a_job_whose_longest_example_cannot_fit_is_refused_before_it_is_queued(platform, tenant, db,
                                                                                     make_trainer):
    trainer = make_trainer(LORAFLEET_TRAINER_MAX_MEMORY_BYTES=str(300 << 20))  # less than the tiny model needs
    async with _sdk(platform.url, tenant) as sdk:
        file = await sdk.files.create(file=("t.jsonl", _jsonl(ROWS)), purpose="fine-tune")
        job = await sdk.fine_tuning.jobs.create(model=trainer.base_model, training_file=file.id)
        while await trainer.validate_next():
            pass
        failed = await sdk.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.error.code == "exceeds_trainer_memory", failed.error
    assert "MiB" in failed.error.message


# ---- finding 4: validation is bounded, reserved and billed ---------------------------------------------------

async def test_a_validation_file_larger_than_the_training_file_is_refused(platform, tenant, make_trainer):
    small, large = _jsonl(ROWS), _jsonl(ROWS * 30)
    async with _sdk(platform.url, tenant) as sdk:
        train = await sdk.files.create(file=("t.jsonl", small), purpose="fine-tune")
        valid = await sdk.files.create(file=("v.jsonl", large), purpose="fine-tune")
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        answer = await http.post("/v1/fine_tuning/jobs", json={"model": STUB_MODEL, "training_file": train.id,
                                                                "validation_file": valid.id})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "validation_file", answer.text
    # As many bytes, more tokens (digits tokenize one by one): refused while the files are checked.
    trainer = make_trainer()
    wordy = [{"messages": [{"role": "user", "content": "word " * 20}, {"role": "assistant", "content": "yes"}]}] * 10
    digits = [{"messages": [{"role": "user", "content": "1 2 3 4 5 6 7 8 9 " * 11},
                            {"role": "assistant", "content": "9"}]}] * 10
    async with _sdk(platform.url, tenant) as sdk:
        train = await sdk.files.create(file=("t.jsonl", _jsonl(wordy)), purpose="fine-tune")
        valid = await sdk.files.create(file=("v.jsonl", _jsonl(digits)[:len(_jsonl(wordy))]), purpose="fine-tune")
        job = await sdk.fine_tuning.jobs.create(model=trainer.base_model, training_file=train.id, validation_file=valid.id)
        while await trainer.validate_next():
            pass
        failed = await sdk.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.error.param == "validation_file", failed.error
    assert failed.error.code == "too_many_tokens"


async def test_validation_passes_are_reserved_and_billed(platform, tenant, db, make_trainer, price):
    """970 B of training data with a 304 KB validation file took 820 s of validation, neither reserved nor
    billed. Now the worst case reserves the validation file once per epoch, and the passes (a sampled one at
    each epoch's end, the full file at the end) are billed with the trained tokens."""
    await _prepaid(platform, tenant, 10_000_000)
    trainer = make_trainer(LORAFLEET_TRAINER_VALIDATION_SAMPLE="2")
    async with _sdk(platform.url, tenant) as sdk:
        train = await sdk.files.create(file=("t.jsonl", _jsonl(ROWS)), purpose="fine-tune")
        valid = await sdk.files.create(file=("v.jsonl", _jsonl(ROWS[:5])), purpose="fine-tune")
        job = await sdk.fine_tuning.jobs.create(model=trainer.base_model, training_file=train.id,
                                                validation_file=valid.id, hyperparameters={"n_epochs": 3, "batch_size": 4})
        sizes = (await sdk.files.retrieve(train.id)).bytes, (await sdk.files.retrieve(valid.id)).bytes
    assert (await _reserved(db, tenant))[2] == [(job.id, 3 * (sizes[0] + sizes[1]))]
    while await trainer.validate_next():
        pass
    assert await trainer.train_next()
    row = await _job(db, job.id)
    assert row["status"] == "succeeded", row["error"]
    events = await db.fetch("SELECT data FROM fine_tuning_events WHERE job_id = $1 AND type = 'metrics' ORDER BY seq",
                            job.id)
    validated = [e["data"] for e in events if "valid_loss" in e["data"]]
    assert [d["step"] for d in validated] == [3, 6, 9] and "full_valid_loss" in validated[-1]
    # OpenAI's metrics (issue 30, part 5): accuracy beside each validation loss, the full pass's at the end.
    assert all(0 <= d["valid_mean_token_accuracy"] <= 1 for d in validated)
    assert (validated[-1]["full_valid_loss"], validated[-1]["full_valid_mean_token_accuracy"]) == (
        validated[-1]["valid_loss"], validated[-1]["valid_mean_token_accuracy"])
    assert not any("full_valid_mean_token_accuracy" in d for d in validated[:-1])
    assert 0 < validated[0]["validation_tokens"] < validated[1]["validation_tokens"] < validated[2]["validation_tokens"]
    assert row["validation_tokens"] == validated[-1]["validation_tokens"]
    ledger = await _ledger(db, job.id)
    assert ledger["prompt_tokens"] == row["trained_tokens"] + row["validation_tokens"]
    assert ledger["cost_pico_usd"] == ledger["prompt_tokens"] * price
    # The step metrics as OpenAI's result file (issue 30, part 9): one row a step, validation where measured.
    async with _sdk(platform.url, tenant) as sdk:
        result_files = (await sdk.fine_tuning.jobs.retrieve(job.id)).result_files
        assert len(result_files) == 1 and (await sdk.files.retrieve(result_files[0])).purpose == "fine-tune-results"
        lines = (await sdk.files.content(result_files[0])).text.splitlines()
        checkpoints = (await sdk.fine_tuning.jobs.checkpoints.list(job.id)).data
    assert checkpoints and all(c.metrics.valid_mean_token_accuracy is not None for c in checkpoints)
    assert checkpoints[0].step_number == 9 and checkpoints[0].metrics.full_valid_mean_token_accuracy == pytest.approx(
        validated[-1]["full_valid_mean_token_accuracy"])
    assert lines[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    cells = [line.split(",") for line in lines[1:]]
    assert [int(c[0]) for c in cells] == list(range(1, 10))
    assert all(float(c[1]) > 0 and 0 <= float(c[2]) <= 1 for c in cells)
    assert [int(c[0]) for c in cells if c[3]] == [int(c[0]) for c in cells if c[4]] == [3, 6, 9]
    assert [(float(c[3]), float(c[4])) for c in cells if c[3]] == [
        (pytest.approx(d["valid_loss"], rel=1e-5), pytest.approx(d["valid_mean_token_accuracy"], rel=1e-5))
        for d in validated]


async def _metrics_steps(db, job_id: str) -> list[int]:
    rows = await db.fetch("SELECT data FROM fine_tuning_events WHERE job_id = $1 AND type = 'metrics' ORDER BY seq",
                          job_id)
    return [msgspec.json.decode(r["data"])["step"] if isinstance(r["data"], str) else r["data"]["step"] for r in rows]


async def test_pause_checkpoints_and_frees_the_trainer_and_resume_trains_no_step_twice(
        platform, tenant, other_tenant, db, make_trainer, price):
    """Issue 30, part 4, with the official SDK: a job paused mid-training stops after a checkpoint of its last
    step, lets its trainer go (the trainer takes the next job) and keeps its reservation, nothing billed yet;
    resumed, it continues from that step: every step is trained once, and billed once when it ends.
    Another tenant can neither pause nor resume it (404), and a finished job cannot be paused (400)."""
    from tests.slow_child import slow_child

    await _prepaid(platform, tenant, 10_000_000)
    trainer = make_trainer()
    trainer.child_target = slow_child
    async with _sdk(platform.url, tenant) as sdk, _sdk(platform.url, other_tenant) as theirs:
        train = await sdk.files.create(file=("t.jsonl", _jsonl(ROWS)), purpose="fine-tune")
        job = await sdk.fine_tuning.jobs.create(model=trainer.base_model, training_file=train.id,
                                                hyperparameters={"n_epochs": 2, "batch_size": 1})  # 24 steps
        while await trainer.validate_next():
            pass
        reserved = (await _reserved(db, tenant))[0]
        training = asyncio.create_task(trainer.train_next())
        await eventually(lambda: _metrics_steps(db, job.id), lambda steps: len(steps) >= 3, timeout=120,
                         what="three steps trained")
        for other in (theirs.fine_tuning.jobs.pause, theirs.fine_tuning.jobs.resume):
            with pytest.raises(openai.NotFoundError):
                await other(job.id)
        paused = await sdk.fine_tuning.jobs.pause(job.id)
        assert paused.status == "paused"
        assert await asyncio.wait_for(training, 60)  # the trainer let go of it
        row = await _job(db, job.id)
        first_take = await _metrics_steps(db, job.id)
        stopped_at = first_take[-1]
        assert (row["status"], row["trainer_id"]) == ("paused", None) and 3 <= stopped_at < 24
        checkpoints = (await sdk.fine_tuning.jobs.checkpoints.list(job.id)).data
        assert checkpoints[0].step_number == stopped_at  # the pause saved the last step done
        assert await _ledger(db, job.id) is None and (await _reserved(db, tenant))[0] == reserved  # held, unbilled
        assert not await trainer.train_next()  # a paused job is not taken
        resumed = await sdk.fine_tuning.jobs.resume(job.id)
        assert resumed.status == "queued"
        assert await trainer.train_next()
        done = await sdk.fine_tuning.jobs.retrieve(job.id)
        assert done.status == "succeeded", done.error
        with pytest.raises(openai.BadRequestError) as finished:
            await sdk.fine_tuning.jobs.pause(job.id)
        assert finished.value.code == "job_not_pausable"
        events = [e.message async for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
    steps = await _metrics_steps(db, job.id)
    assert steps == list(range(1, 25)), steps  # every step once: none trained twice, none skipped
    assert any(m.startswith(f"Job paused after step {stopped_at}") for m in events)
    assert any(m == f"Resuming from the checkpoint at step {stopped_at}" for m in events)
    assert events.count("Fine-tuning job started") == 1 and "Fine-tuning job resumed (take 1)" in events
    row = await _job(db, job.id)
    tokens = row["file_tokens"]
    assert row["trained_tokens"] == 2 * tokens  # each example twice (2 epochs), not more
    ledger = await _ledger(db, job.id)
    assert (ledger["outcome"], ledger["prompt_tokens"]) == ("success", 2 * tokens)
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE request_id = $1", job.id) == 1
    assert (await _reserved(db, tenant))[0] == 0


async def test_a_paused_job_cancelled_bills_its_steps_once_and_its_checkpoints_go(platform, tenant, db, make_trainer,
                                                                                   price):
    """Cancelled while paused (no trainer holds it): the steps its takes trained are billed once, as cancelled,
    its reservation goes back, and a trainer removes its checkpoints' blobs."""
    from tests.slow_child import slow_child

    await _prepaid(platform, tenant, 10_000_000)
    trainer = make_trainer()
    trainer.child_target = slow_child
    async with _sdk(platform.url, tenant) as sdk:
        train = await sdk.files.create(file=("t.jsonl", _jsonl(ROWS)), purpose="fine-tune")
        job = await sdk.fine_tuning.jobs.create(model=trainer.base_model, training_file=train.id,
                                                hyperparameters={"n_epochs": 2, "batch_size": 1})
        while await trainer.validate_next():
            pass
        training = asyncio.create_task(trainer.train_next())
        await eventually(lambda: _metrics_steps(db, job.id), lambda steps: len(steps) >= 2, timeout=120,
                         what="two steps trained")
        await sdk.fine_tuning.jobs.pause(job.id)
        assert await asyncio.wait_for(training, 60)
        row = await _job(db, job.id)
        assert row["status"] == "paused" and row["trained_tokens"] > 0
        assert await db.fetchval("SELECT count(*) FROM fine_tuning_checkpoints WHERE job_id = $1 AND blob_live",
                                 job.id) == 1
        cancelled = await sdk.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled"
    ledger = await _ledger(db, job.id)
    assert (ledger["outcome"], ledger["prompt_tokens"]) == ("cancelled", row["trained_tokens"])
    assert (await _reserved(db, tenant))[0] == 0
    assert not await trainer.train_next()  # nothing to take; the leftovers are swept
    assert await db.fetchval("SELECT count(*) FROM fine_tuning_checkpoints WHERE job_id = $1 AND blob_live",
                             job.id) == 0
