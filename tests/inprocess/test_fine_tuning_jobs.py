"""Fine-tuning jobs against the real gateway and PostgreSQL: the official SDK's shapes, refusals at
create, validation of the file by a trainer with the base model's real tokenizer and template (the
error names the line, param "training_file"), cancel, the per-tenant cap, and the queue's take /
heartbeat / stale re-take / give-up rules. No training here: tests/integration/test_fine_tuning.py
trains and serves for real."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re

import httpx
import openai
import pytest
from lorafleet.core.settings import TrainerSettings, load_settings
from lorafleet.db import queries
from lorafleet.trainer.runner import Trainer

from tests.helpers import TenantKey
from tests.inprocess.conftest import STUB_MODEL

GOOD = {"messages": [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4."}]}


def _jsonl(rows: list) -> bytes:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode()


def _sdk(url: str, tenant: TenantKey) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=tenant.secret, max_retries=0)


@pytest.fixture
def trainer(platform, db, model_path, tmp_path):
    """A trainer of the in-process tier's base model with SmolLM2's real tokenizer and template."""
    settings = load_settings(TrainerSettings, {"LORAFLEET_DATABASE_URL": "postgresql://unused/unused", "LORAFLEET_MODEL_NAME": STUB_MODEL,
                              "LORAFLEET_MODEL_PATH": str(model_path), "LORAFLEET_DATA_DIR": str(tmp_path),
                              "LORAFLEET_BLOB_DIR": str(platform.app.state.services.settings.resolved_blob_dir),
                              "LORAFLEET_TRAINER_STALE_SECONDS": "5"})
    runner = Trainer(settings, db)
    runner.base_model_id = platform.base_model_id
    return runner


async def _drain_validation(trainer: Trainer) -> None:
    while await trainer.validate_next():
        pass


async def test_create_retrieve_list_events_with_the_sdk(platform, tenant, trainer, db):
    async with _sdk(platform.url, tenant) as sdk:
        file = await sdk.files.create(file=("t.jsonl", _jsonl([GOOD] * 12)), purpose="fine-tune")
        job = await sdk.fine_tuning.jobs.create(
            model=STUB_MODEL, training_file=file.id, suffix="sums", seed=7, metadata={"team": "a"},
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto"}}})
        assert job.id.startswith("ftjob-") and job.object == "fine_tuning.job"
        assert (job.status, job.model, job.training_file, job.seed, job.error, job.fine_tuned_model) == (
            "validating_files", STUB_MODEL, file.id, 7, None, None)
        assert job.metadata == {"team": "a"}
        assert job.method.supervised.hyperparameters.n_epochs == 2
        assert job.method.supervised.hyperparameters.batch_size == "auto"
        await _drain_validation(trainer)
        queued = await sdk.fine_tuning.jobs.retrieve(job.id)
        assert queued.status == "queued" and queued.error is None
        assert queued.hyperparameters.batch_size == 1 and queued.hyperparameters.n_epochs == 2  # "auto" resolved
        assert queued.hyperparameters.learning_rate_multiplier == 4.0
        events = [e async for e in sdk.fine_tuning.jobs.list_events(job.id)]
        # Where it stands in the queue (other tests' jobs of this base model may be queued ahead of it).
        assert re.fullmatch(r"Queued: position (\d+) of (\d+) for this base model \((\d+) jobs? ahead, \d+ training now\)",
                            events[0].message), events[0].message
        position, queued, ahead = map(int, re.match(r"Queued: position (\d+) of (\d+) .*?\((\d+)",
                                                    events[0].message).groups())
        assert 1 <= position <= queued and ahead == position - 1, events[0].message
        assert events[1].message.startswith("Files validated: 12 examples") and events[-1].message.startswith(
            "Validating training file")
        assert [j.id async for j in sdk.fine_tuning.jobs.list()][0] == job.id
        assert (await sdk.fine_tuning.jobs.checkpoints.list(job.id)).data == []
        cancelled = await sdk.fine_tuning.jobs.cancel(job.id)
        assert cancelled.status == "cancelled" and cancelled.finished_at is not None
        with pytest.raises(openai.BadRequestError) as again:
            await sdk.fine_tuning.jobs.cancel(job.id)
        assert again.value.code == "job_not_cancellable"
    assert await db.fetchval("SELECT count(*) FROM fine_tuning_jobs WHERE id = $1 AND status = 'cancelled'", job.id) == 1


@pytest.mark.parametrize("rows, line, code, words", [
    (["{not json", *[GOOD] * 11], 1, "invalid_file_format", "not valid JSON"),
    ([GOOD] * 5 + [{"messages": [{"role": "wizard", "content": "x"}]}] + [GOOD] * 6, 6, "invalid_file_format",
     "role 'wizard' is not one of system, user, assistant"),
    ([GOOD] * 3 + [{"messages": [{"role": "user", "content": "x"}]}] + [GOOD] * 8, 4, "invalid_file_format",
     "no assistant message"),
    ([GOOD] * 2 + [{"messages": [{"role": "user", "content": "word " * 3000},
                                 {"role": "assistant", "content": "x"}]}] + [GOOD] * 9, 3, "example_too_long",
     "tokens; the limit is 2048"),
    ([GOOD] * 4, None, "invalid_n_examples", "at least 10 are needed"),
    ([], None, "invalid_n_examples", "empty"),
])
async def test_a_bad_file_fails_the_job_naming_the_line(platform, tenant, trainer, rows, line, code, words):
    async with _sdk(platform.url, tenant) as sdk:
        file = await sdk.files.create(file=("bad.jsonl", _jsonl(rows)), purpose="fine-tune")
        job = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id)
        await _drain_validation(trainer)
        failed = await sdk.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.error is not None, failed
    assert (failed.error.code, failed.error.param) == (code, "training_file")
    assert words in failed.error.message
    if line is not None:
        assert failed.error.message.startswith(f"line {line}: "), failed.error.message


async def test_refusals_at_create(platform, tenant, other_tenant):
    async with _sdk(platform.url, tenant) as sdk:
        file = await sdk.files.create(file=("t.jsonl", _jsonl([GOOD] * 10)), purpose="fine-tune")
        batch = await sdk.files.create(file=("b.jsonl", b"{}\n"), purpose="batch")
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        async def create(**body):
            return await http.post("/v1/fine_tuning/jobs", json={"model": STUB_MODEL, "training_file": file.id, **body})
        cases = {
            "model": await create(model="no-such-model"),
            "training_file": await create(training_file=batch.id),
            "method.type": await create(method={"type": "dpo"}),
            "hyperparameters.n_epochs": await create(hyperparameters={"n_epochs": 0}),
            "method.supervised.hyperparameters.lora_r": await create(
                method={"type": "supervised", "supervised": {"hyperparameters": {"lora_r": 1000}}}),
            "suffix": await create(suffix="a:b"),
        }
    for param, answer in cases.items():
        assert answer.status_code in (400, 404), (param, answer.text)
        assert answer.json()["error"]["param"] == param, (param, answer.text)
    async with httpx.AsyncClient(base_url=platform.url, headers=other_tenant.headers) as theirs:
        answer = await theirs.post("/v1/fine_tuning/jobs", json={"model": STUB_MODEL, "training_file": file.id})
    assert (answer.status_code, answer.json()["error"]["param"]) == (400, "training_file")


async def test_what_openai_offers_and_we_do_not_is_refused_in_words(platform, tenant):
    """Each OpenAI feature not offered here is a 400 naming its parameter and saying why, through the SDK
    unchanged — never the validator's wording ("Expected `array` of length <= 0") and never a silent ignore."""
    async with _sdk(platform.url, tenant) as sdk:
        file = await sdk.files.create(file=("t.jsonl", _jsonl([GOOD] * 10)), purpose="fine-tune")
        cases = {
            "integrations": dict(integrations=[{"type": "wandb", "wandb": {"project": "mine"}}]),
            "method.type": dict(method={"type": "reinforcement", "reinforcement": {
                "grader": {"type": "string_check", "name": "g", "input": "{{sample.output_text}}",
                           "reference": "{{item.answer}}", "operation": "eq"}}}),
        }
        words = {"integrations": "Weights & Biases", "method.type": "graders"}
        for param, extra in cases.items():
            with pytest.raises(openai.BadRequestError) as caught:
                await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id, **extra)
            error = caught.value.body
            assert (error["param"], error["code"]) == (param, "unsupported_parameter"), error
            assert words[param] in error["message"] and "Expected" not in error["message"], error
        assert not (await sdk.fine_tuning.jobs.list()).data, "nothing was created"


async def test_jobs_list_filters_by_metadata_as_the_sdk_sends_it(platform, other_tenant):
    """`jobs.list(metadata={...})` (the SDK sends metadata[k]=v) holds only jobs whose metadata contains every
    pair; `metadata=null` only jobs without any; a malformed filter is a 400 naming metadata."""
    async with _sdk(platform.url, other_tenant) as sdk:
        file = await sdk.files.create(file=("t.jsonl", _jsonl([GOOD] * 10)), purpose="fine-tune")
        made = {}
        for label, metadata in (("a", {"team": "a", "env": "prod"}), ("b", {"team": "b"}), ("none", None)):
            extra = {"metadata": metadata} if metadata else {}
            made[label] = (await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id, **extra)).id
        try:
            async def ids_of(**query):
                return {job.id async for job in sdk.fine_tuning.jobs.list(**query)} & set(made.values())
            assert await ids_of(metadata={"team": "a"}) == {made["a"]}
            assert await ids_of(metadata={"team": "a", "env": "prod"}) == {made["a"]}
            assert await ids_of(metadata={"team": "a", "env": "dev"}) == set()
            assert await ids_of() == set(made.values())
            assert await ids_of(extra_query={"metadata": "null"}) == {made["none"]}
            with pytest.raises(openai.BadRequestError) as caught:
                await sdk.fine_tuning.jobs.list(extra_query={"metadata": "yes"})
            assert caught.value.body["param"] == "metadata"
        finally:
            for job_id in made.values():
                await sdk.fine_tuning.jobs.cancel(job_id)


async def test_another_tenants_job_is_answered_like_a_missing_one(platform, tenant, other_tenant):
    async with _sdk(platform.url, tenant) as sdk:
        file = await sdk.files.create(file=("t.jsonl", _jsonl([GOOD] * 10)), purpose="fine-tune")
        job = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id)
    missing = "ftjob-" + "x" * 20
    async with httpx.AsyncClient(base_url=platform.url, headers=other_tenant.headers) as theirs:
        for method, path in (("GET", "/v1/fine_tuning/jobs/{}"), ("GET", "/v1/fine_tuning/jobs/{}/events"),
                             ("GET", "/v1/fine_tuning/jobs/{}/checkpoints"), ("POST", "/v1/fine_tuning/jobs/{}/cancel")):
            answers = [await theirs.request(method, path.format(i)) for i in (job.id, missing)]
            assert [a.status_code for a in answers] == [404, 404], path
            assert answers[0].json() == json.loads(answers[1].text.replace(missing, job.id))
        assert (await theirs.get("/v1/fine_tuning/jobs")).json()["data"] == []
    async with _sdk(platform.url, tenant) as sdk:
        assert (await sdk.fine_tuning.jobs.retrieve(job.id)).status == "validating_files"
        await sdk.fine_tuning.jobs.cancel(job.id)


async def test_open_jobs_per_tenant_are_capped(start_gateway, tenant):
    gateway = await start_gateway(TENANT_MAX_FINE_TUNING_JOBS="2")
    async with _sdk(gateway.url, tenant) as sdk:
        file = await sdk.files.create(file=("t.jsonl", _jsonl([GOOD] * 10)), purpose="fine-tune")
        jobs = [await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id) for _ in range(2)]
        with pytest.raises(openai.RateLimitError) as refused:
            await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id)
        assert refused.value.code == "too_many_fine_tuning_jobs"
        await sdk.fine_tuning.jobs.cancel(jobs[0].id)
        assert (await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id)).status == "validating_files"


async def test_the_queue_takes_once_retakes_a_stale_job_and_gives_up(platform, tenant, db):
    async with _sdk(platform.url, tenant) as sdk:
        file = await sdk.files.create(file=("t.jsonl", _jsonl([GOOD] * 10)), purpose="fine-tune")
        job = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id)
    await db.execute("UPDATE fine_tuning_jobs SET status = 'queued' WHERE id = $1", job.id)
    # Only this test's job is in play: others of the same base model are set aside for the while.
    others = [r["id"] for r in await db.fetch(
        "UPDATE fine_tuning_jobs SET status = 'cancelled' WHERE base_model_id = $1 AND id <> $2 "
        "AND status IN ('queued', 'running', 'validating_files') RETURNING id", platform.base_model_id, job.id)]
    base, stale, attempts = platform.base_model_id, 30.0, 3

    async def claim(trainer_id: str):
        return await db.fetchrow(queries.claim_fine_tuning_job, base, trainer_id, stale, attempts)

    taken = await claim("trn_a")
    assert (taken["id"], taken["status"], taken["attempts"], taken["trainer_id"]) == (job.id, "running", 1, "trn_a")
    assert await claim("trn_b") is None  # beating: nobody else takes it
    assert await db.fetchval(queries.heartbeat_fine_tuning_job, job.id, "trn_a", None) == job.id
    assert await db.fetchval(queries.heartbeat_fine_tuning_job, job.id, "trn_b", None) is None  # not b's
    await db.execute("UPDATE fine_tuning_jobs SET heartbeat_at = now() - interval '1 minute' WHERE id = $1", job.id)
    retaken = await claim("trn_b")
    assert (retaken["id"], retaken["attempts"], retaken["trainer_id"]) == (job.id, 2, "trn_b")
    assert await db.fetchval(queries.heartbeat_fine_tuning_job, job.id, "trn_a", None) is None  # a lost it: a stops
    await db.execute("UPDATE fine_tuning_jobs SET heartbeat_at = now() - interval '1 minute', attempts = 3 "
                     "WHERE id = $1", job.id)
    assert await claim("trn_c") is None  # out of attempts
    failed = await db.fetch(queries.fail_exhausted_fine_tuning_jobs, base, stale, attempts)
    assert [r["id"] for r in failed] == [job.id]
    row = await db.fetchrow("SELECT status, error FROM fine_tuning_jobs WHERE id = $1", job.id)
    assert row["status"] == "failed" and row["error"]["code"] == "trainer_attempts_exhausted"
    # A trainer stopping on purpose hands the job back without spending an attempt.
    await db.execute("UPDATE fine_tuning_jobs SET status = 'queued', attempts = 0, error = NULL WHERE id = $1", job.id)
    taken = await claim("trn_d")
    assert await db.fetchval(queries.requeue_fine_tuning_job, job.id, "trn_d") == job.id
    assert await db.fetchval("SELECT attempts FROM fine_tuning_jobs WHERE id = $1", job.id) == 0
    # And a cancel reaches a running job's trainer at its next heartbeat.
    await claim("trn_e")
    async with _sdk(platform.url, tenant) as sdk:
        assert (await sdk.fine_tuning.jobs.cancel(job.id)).status == "cancelled"
    assert await db.fetchval(queries.heartbeat_fine_tuning_job, job.id, "trn_e", None) is None
    await db.execute("UPDATE fine_tuning_jobs SET status = 'queued' WHERE id = ANY($1)", others)


async def test_a_price_version_carries_a_training_price(platform):
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.admin_headers) as http:
        answer = await http.post("/admin/prices", json={
            "base_model": STUB_MODEL, "prompt_micro_usd_per_mtok": 0, "completion_micro_usd_per_mtok": 0,
            "training_micro_usd_per_mtok": 3_000_000, "effective_at": "2998-01-01T00:00:00Z"})
        listed = (await http.get("/admin/prices", params={"limit": 100})).json()["data"]
    assert answer.status_code == 201, answer.text
    assert answer.json()["training_micro_usd_per_mtok"] == 3_000_000
    assert [p["training_micro_usd_per_mtok"] for p in listed if p["id"] == answer.json()["id"]] == [3_000_000]


@pytest.fixture
async def training_price(platform, db):
    """1 USD per million trained tokens for the tier's base model while the test runs (the other
    tests' training price stays 0)."""
    price = await db.fetchrow(queries.training_price, platform.base_model_id, dt.datetime.now(dt.UTC))
    current = await db.fetchrow("SELECT * FROM prices WHERE id = $1", price["id"]) if price else None
    await db.execute(
        "INSERT INTO prices (base_model_id, prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok, "
        "adapter_surcharge_micro_usd_per_mtok, training_micro_usd_per_mtok, cached_prompt_micro_usd_per_mtok, "
        "effective_at) VALUES ($1, $2, $3, $4, $5, $6, now())",
        platform.base_model_id, current["prompt_micro_usd_per_mtok"] if current else 0,
        current["completion_micro_usd_per_mtok"] if current else 0,
        current["adapter_surcharge_micro_usd_per_mtok"] if current else 0, 1_000_000,
        current["cached_prompt_micro_usd_per_mtok"] if current else None)
    yield 1_000_000
    await db.execute("DELETE FROM prices WHERE base_model_id = $1 AND training_micro_usd_per_mtok = 1000000",
                     platform.base_model_id)


async def _prepaid(platform, tenant, micro_usd: int) -> None:
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.admin_headers) as admin:
        assert (await admin.patch(f"/admin/tenants/{tenant.tenant_id}", json={"billing_mode": "prepaid"})).status_code == 200
        assert (await admin.post(f"/admin/tenants/{tenant.tenant_id}/credits",
                                 json={"amount_micro_usd": micro_usd})).status_code == 201


def _bytes(size: int) -> bytes:
    row = json.dumps(GOOD) + "\n"
    return (row * (size // len(row) + 1)).encode()[:size]


async def _reserved(db, tenant) -> tuple[int, int, list]:
    account = await db.fetchrow("SELECT reserved_micro_usd, in_flight FROM tenant_accounts WHERE tenant_id = $1",
                                tenant.tenant_id)
    held = await db.fetch("SELECT request_id, amount_micro_usd FROM reservations WHERE tenant_id = $1 "
                          "ORDER BY created_at", tenant.tenant_id)
    return account["reserved_micro_usd"], account["in_flight"], [(r["request_id"], r["amount_micro_usd"]) for r in held]


async def test_a_job_the_budget_cannot_cover_is_refused_with_402(platform, tenant, db, training_price):
    """Prepaid with 1 USD of credit, 1 USD per million trained tokens: a 100 kB file × 20 epochs may
    train up to 2 M tokens (2 USD): refused before it queues; 5 epochs (0.5 USD) is accepted, and its
    worst case is held in the account (not as a request in flight) until the cancel gives it back."""
    await _prepaid(platform, tenant, 1_000_000)
    async with _sdk(platform.url, tenant) as sdk:
        file = await sdk.files.create(file=("big.jsonl", _bytes(100_000)), purpose="fine-tune")
        with pytest.raises(openai.APIStatusError) as refused:
            await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id, hyperparameters={"n_epochs": 20})
        assert refused.value.status_code == 402 and refused.value.code == "insufficient_quota"
        assert "2000000 micro-USD" in refused.value.message
        assert [j async for j in sdk.fine_tuning.jobs.list()] == []  # nothing queued
        assert await _reserved(db, tenant) == (0, 0, [])
        job = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id, hyperparameters={"n_epochs": 5})
        assert await _reserved(db, tenant) == (500_000, 0, [(job.id, 500_000)])
        await sdk.fine_tuning.jobs.cancel(job.id)
        assert await _reserved(db, tenant) == (0, 0, [])
        # What was given back can be reserved again.
        again = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id, hyperparameters={"n_epochs": 10})
        assert await _reserved(db, tenant) == (1_000_000, 0, [(again.id, 1_000_000)])
        await sdk.fine_tuning.jobs.cancel(again.id)


async def test_open_jobs_together_never_reserve_past_the_limit(platform, tenant, db, training_price):
    """A spend limit of 1 USD and two jobs of 0.6 USD each: each alone fits, both do not — one after the
    other, and also sent at once (the account row is locked while a create reserves)."""
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.admin_headers) as admin:
        assert (await admin.patch(f"/admin/tenants/{tenant.tenant_id}",
                                  json={"monthly_spend_limit_micro_usd": 1_000_000})).status_code == 200
    async with _sdk(platform.url, tenant) as sdk:
        file = await sdk.files.create(file=("t.jsonl", _bytes(200_000)), purpose="fine-tune")
        first = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id, hyperparameters={"n_epochs": 3})
        with pytest.raises(openai.APIStatusError) as refused:
            await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id, hyperparameters={"n_epochs": 3})
        assert refused.value.status_code == 402 and "spend limit" in refused.value.message
        await sdk.fine_tuning.jobs.cancel(first.id)
        assert await _reserved(db, tenant) == (0, 0, [])

        async def create():
            try:
                return await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id,
                                                         hyperparameters={"n_epochs": 3})
            except openai.APIStatusError as exc:
                return exc.status_code

        answers = await asyncio.gather(*(create() for _ in range(4)))
        created = [a for a in answers if not isinstance(a, int)]
        assert len(created) == 1 and sorted(a for a in answers if isinstance(a, int)) == [402, 402, 402], answers
        assert await _reserved(db, tenant) == (600_000, 0, [(created[0].id, 600_000)])
        await sdk.fine_tuning.jobs.cancel(created[0].id)


async def test_every_ending_releases_the_reservation_once_and_the_sweeper_keeps_it_meanwhile(
        platform, tenant, trainer, db, training_price):
    """A file the trainer refuses fails the job and gives its reservation back; a job whose trainer died
    after ending it (reservation left behind) is released by the sweeper, but never while the job is
    open, however old the reservation; a running job's cancel leaves its reservation to the trainer,
    which bills the trained steps and releases it in one transaction."""
    await _prepaid(platform, tenant, 10_000_000)
    sweep = lambda: db.fetchval(queries.sweep_reservations, 0.0, 0.0)  # noqa: E731 - every gateway "dead", every reservation "too old"
    async with _sdk(platform.url, tenant) as sdk:
        bad = await sdk.files.create(file=("bad.jsonl", _jsonl(["{not json", *[GOOD] * 11])), purpose="fine-tune")
        refused = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=bad.id, hyperparameters={"n_epochs": 1})
        trained = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=bad.id, hyperparameters={"n_epochs": 2})
        size = (await sdk.files.retrieve(bad.id)).bytes
        assert await _reserved(db, tenant) == (3 * size, 0, [(refused.id, size), (trained.id, 2 * size)])
        await sweep()
        assert (await _reserved(db, tenant))[0] == 3 * size  # open jobs: kept
        await db.execute("UPDATE fine_tuning_jobs SET status = 'queued' WHERE id = $1", trained.id)  # set aside
        await _drain_validation(trainer)
        assert (await sdk.fine_tuning.jobs.retrieve(refused.id)).status == "failed"
        assert await _reserved(db, tenant) == (2 * size, 0, [(trained.id, 2 * size)])
        await trainer._bill({"id": refused.id}, 0)  # a second release gives nothing back twice
        assert (await _reserved(db, tenant))[0] == 2 * size
        # Running, then cancelled: the canceller leaves the reservation to the trainer, and the sweeper
        # gives the trainer its grace period ($1 seconds after the end) to bill and release it.
        await db.execute("UPDATE fine_tuning_jobs SET status = 'running', trainer_id = 'trn_x', heartbeat_at = now(), "
                         "started_at = now() WHERE id = $1", trained.id)
        await sdk.fine_tuning.jobs.cancel(trained.id)
    assert (await _reserved(db, tenant))[0] == 2 * size
    await db.fetchval(queries.sweep_reservations, 60.0, 0.0)
    assert (await _reserved(db, tenant))[0] == 2 * size
    job = await db.fetchrow("SELECT * FROM fine_tuning_jobs WHERE id = $1", trained.id)
    await trainer._bill(job, 1234)  # the trainer's end: 1234 tokens trained at 1 USD/M
    account = await db.fetchrow("SELECT reserved_micro_usd, spent_total_micro_usd, in_flight FROM tenant_accounts "
                                "WHERE tenant_id = $1", tenant.tenant_id)
    assert (account["reserved_micro_usd"], account["spent_total_micro_usd"], account["in_flight"]) == (0, 1234, 0)
    assert await db.fetchval("SELECT prompt_tokens FROM usage_ledger WHERE request_id = $1", trained.id) == 1234
    # The trainer died after ending a job: the sweeper gives its reservation back, once.
    await db.execute("INSERT INTO reservations (request_id, tenant_id, gateway_id, amount_micro_usd) "
                     "VALUES ($1, $2, 'fine-tuning', 77)", refused.id, tenant.tenant_id)
    await db.execute("UPDATE tenant_accounts SET reserved_micro_usd = reserved_micro_usd + 77 WHERE tenant_id = $1",
                     tenant.tenant_id)
    await sweep()
    assert await _reserved(db, tenant) == (0, 0, [])


async def test_training_is_its_own_invoice_line(platform, tenant, db):
    """A fine-tuning job's ledger row (what the trainer writes) and an inference request of the same base
    model and price version become two invoice lines; the training line names the job and its tokens."""
    from lorafleet.billing.ledger_row import Endpoint, LedgerRow, Outcome, column_arrays

    from tests.helpers import close_this_month, wait_rows

    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        assert (await http.post("/v1/completions", json={"model": STUB_MODEL, "prompt": "x", "max_tokens": 2})).status_code == 200
    await wait_rows(db, tenant.tenant_id, 1)
    now = dt.datetime.now(dt.UTC)
    row = LedgerRow(request_id="ftjob-invoiceline" + tenant.tenant_id[-8:], tenant_id=tenant.tenant_id,
                    api_key_id=tenant.key_id, base_model_id=platform.base_model_id, model=STUB_MODEL,
                    endpoint=Endpoint.FINE_TUNING, outcome=Outcome.SUCCESS, http_status=200, streamed=False,
                    prompt_tokens=976, completion_tokens=0, worker_url=None, started_at=now, finished_at=now,
                    ttft_ms=None, duration_ms=1000, cost_pico_usd=976 * 2_000_000)
    await db.execute(queries.insert_usage_rows, *column_arrays([row]))
    invoice_id = await close_this_month(db, tenant.tenant_id)
    lines = await db.fetch("SELECT description, prompt_tokens, amount_pico_usd FROM invoice_lines "
                           "WHERE invoice_id = $1 AND kind = 'usage' ORDER BY position", invoice_id)
    training = [line for line in lines if "fine-tuning" in line["description"]]
    assert len(lines) == 2 and len(training) == 1, [dict(line) for line in lines]
    assert training[0]["prompt_tokens"] == 976 and training[0]["amount_pico_usd"] == 976 * 2_000_000
    assert "1 job(s), 976 trained tokens" in training[0]["description"]


async def test_the_dashboard_lists_a_job_shows_its_loss_curve_and_cancels_it(platform, tenant, other_tenant, db):
    from lorafleet.core import ids

    from tests.helpers import dashboard

    async with _sdk(platform.url, tenant) as sdk:
        uploaded = await sdk.files.create(file=("train.jsonl", _jsonl([GOOD] * 10)), purpose="fine-tune")
        job = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=uploaded.id)
    # What a trainer writes as it trains (tests/integration/test_fine_tuning.py trains for real).
    for step, loss in ((1, 2.5), (2, 1.75), (3, 1.25)):
        data = {"step": step, "train_loss": loss, **({"valid_loss": 1.5} if step == 3 else {})}  # epoch's end
        await db.execute("INSERT INTO fine_tuning_events (id, job_id, level, type, message, data) "
                         "VALUES ($1, $2, 'info', 'metrics', $3, $4)", ids.new_id("ftevent"), job.id,
                         f"Step {step}/3: training loss={loss}", data)
    async with dashboard(platform.url, tenant.secret) as (http, csrf):
        listing = await http.get("/dashboard/fine-tuning")
        assert listing.status_code == 200 and job.id in listing.text and 'aria-current="page">Fine-tuning' in listing.text
        page = await http.get(f"/dashboard/fine-tuning/{job.id}")
        assert page.status_code == 200
        assert 'data-testid="job-status">validating_files<' in page.text or 'data-testid="job-status">queued<' in page.text
        assert "Training and validation loss of" in page.text and "<path d=\"M" in page.text  # from the metrics events
        assert 'class="valid-loss"' in page.text and "step 3: validation loss 1.5000" in page.text  # issue 30, part 5
        assert "Step 2/3: training loss=1.75" in page.text
        cancelled = await http.post(f"/dashboard/fine-tuning/{job.id}/cancel", data={"csrf": csrf})
        assert cancelled.status_code == 303 and cancelled.headers["location"] == f"/dashboard/fine-tuning/{job.id}"
        assert 'data-testid="job-status">cancelled<' in (await http.get(f"/dashboard/fine-tuning/{job.id}")).text
        forged = await http.post(f"/dashboard/fine-tuning/{job.id}/cancel", data={"csrf": "wrong"})
        assert forged.status_code == 403
    async with dashboard(platform.url, other_tenant.secret) as (http, csrf):
        theirs = await http.get(f"/dashboard/fine-tuning/{job.id}")
        missing = await http.get(f"/dashboard/fine-tuning/{ids.fine_tuning_job_id()}")
        assert theirs.status_code == missing.status_code == 404
        assert job.id not in (await http.get("/dashboard/fine-tuning")).text


async def test_a_trainer_touches_its_alive_file_while_its_loop_runs(trainer):
    """The Kubernetes probes of a trainer (no port) read this file's age (infra/kustomize/trainer)."""
    from lorafleet.trainer.runner import ALIVE_FILE

    path = trainer.settings.data_path / ALIVE_FILE
    path.unlink(missing_ok=True)
    task = asyncio.create_task(trainer._alive_loop())
    try:
        await asyncio.sleep(0.2)
        first = path.stat().st_mtime
        await asyncio.sleep(trainer.settings.trainer_heartbeat_seconds + 0.3)
        assert path.stat().st_mtime > first
    finally:
        task.cancel()
    await asyncio.sleep(trainer.settings.trainer_heartbeat_seconds + 0.3)
    assert path.stat().st_mtime < dt.datetime.now().timestamp() - trainer.settings.trainer_heartbeat_seconds


async def test_a_validation_that_keeps_crashing_fails_after_the_attempts_cap(platform, tenant, trainer, db,
                                                                             training_price, monkeypatch):
    """Checking the files crashes (an internal error, not a refused line): each take is given back at once
    and counted; after trainer_max_attempts (3) takes the job fails with validation_attempts_exhausted
    and its reservation is released. A take whose trainer died counts the same once its heartbeat is
    stale. A file that passes afterwards starts training with its attempts back at 0."""
    await _prepaid(platform, tenant, 10_000_000)
    async with _sdk(platform.url, tenant) as sdk:
        file = await sdk.files.create(file=("t.jsonl", _jsonl([GOOD] * 12)), purpose="fine-tune")
        crashing = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id)
        dying = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id)
    ours = [crashing.id, dying.id]
    others = [r["id"] for r in await db.fetch(  # only this test's jobs are in play meanwhile
        "UPDATE fine_tuning_jobs SET status = 'cancelled' WHERE base_model_id = $1 AND id <> ALL($2) "
        "AND status IN ('queued', 'running', 'validating_files') RETURNING id", platform.base_model_id, ours)]
    try:
        # The second job's third take died with its trainer: heartbeat stale, no answer.
        await db.execute("UPDATE fine_tuning_jobs SET attempts = 3, trainer_id = 'trn_dead', "
                         "heartbeat_at = now() - interval '1 hour' WHERE id = $1", dying.id)

        def crash(*args, **kwargs):
            raise RuntimeError("tokenizer exploded")

        monkeypatch.setattr(trainer, "renderer", crash)
        for attempt in (1, 2, 3):
            assert await trainer.validate_next()
            row = await db.fetchrow("SELECT status, attempts, trainer_id FROM fine_tuning_jobs WHERE id = $1", crashing.id)
            assert (row["status"], row["attempts"], row["trainer_id"]) == ("validating_files", attempt, None)
        assert await trainer.validate_next() is False  # nothing left to take: both are out of attempts
        async with _sdk(platform.url, tenant) as sdk:
            for job_id in ours:
                failed = await sdk.fine_tuning.jobs.retrieve(job_id)
                assert failed.status == "failed" and failed.error.code == "validation_attempts_exhausted", failed
                assert "3 times" in failed.error.message
            events = [e.message async for e in sdk.fine_tuning.jobs.list_events(crashing.id)]
        assert sum("RuntimeError: tokenizer exploded" in m for m in events) == 3, events
        assert events[0] == "The job failed: checking its files failed too many times."
        assert await _reserved(db, tenant) == (0, 0, [])
        # A take that works restarts the count for training.
        monkeypatch.undo()
        async with _sdk(platform.url, tenant) as sdk:
            good = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id)
        assert await trainer.validate_next()
        assert tuple(await db.fetchrow("SELECT status, attempts FROM fine_tuning_jobs WHERE id = $1", good.id)) == (
            "queued", 0)
        await db.execute("UPDATE fine_tuning_jobs SET status = 'cancelled' WHERE id = $1", good.id)
    finally:
        await db.execute("UPDATE fine_tuning_jobs SET status = 'validating_files' WHERE id = ANY($1)", others)


async def test_the_dashboard_uploads_a_training_file_and_starts_a_job_from_it(platform, tenant, other_tenant):
    """The fine-tuning page's two forms over HTTP (tests/integration/test_dashboard.py drives them, and the
    upload's progress, in a browser): the XHR upload stores a `fine-tune` file, the start form makes a job
    of it; bad input gets a precise refusal, another tenant's file is one that does not exist."""
    from tests.helpers import dashboard

    async with dashboard(platform.url, tenant.secret) as (http, csrf):
        page = await http.get("/dashboard/fine-tuning")
        assert 'id="training-upload"' in page.text and "Upload a training file first" in page.text
        upload = {"files": [("file", ("zorblax.jsonl", _jsonl([GOOD] * 10)))], "data": {"purpose": "fine-tune"}}
        stored = await http.post("/dashboard/fine-tuning/files", headers={"x-csrf-token": csrf}, **upload)
        assert stored.status_code == 201, stored.text
        file_id = stored.json()["id"]
        assert stored.json() == {"id": file_id, "filename": "zorblax.jsonl", "bytes": len(_jsonl([GOOD] * 10))}
        forged = await http.post("/dashboard/fine-tuning/files", headers={"x-csrf-token": "wrong"}, **upload)
        assert forged.status_code == 403
        batch = await http.post("/dashboard/fine-tuning/files", headers={"x-csrf-token": csrf},
                                files=upload["files"], data={"purpose": "batch"})
        assert (batch.status_code, batch.json()["error"]["param"]) == (400, "purpose")
        assert f'<option value="{file_id}">zorblax.jsonl' in (await http.get("/dashboard/fine-tuning")).text

        async def start(**fields):
            return await http.post("/dashboard/fine-tuning", data={"csrf": csrf, "model": STUB_MODEL,
                                                                   "training_file": file_id, **fields})

        bad_suffix, bad_epochs, no_model = await start(suffix="a:b"), await start(n_epochs="0"), await start(model="x")
        assert bad_suffix.status_code == 400 and "suffix" in bad_suffix.text
        assert bad_epochs.status_code == 400 and "n_epochs" in bad_epochs.text
        assert no_model.status_code == 404
        # Issue 28 finding 9: "²" passed str.isdigit() and 5,000 digits passed int()'s digit limit: both were 500s.
        for epochs in ("²", "9" * 5000, "1e3", "-1", "٣", " 2.5 "):
            odd = await start(n_epochs=epochs)
            assert odd.status_code == 400 and "n_epochs" in odd.text, (epochs[:10], odd.status_code, odd.text[:300])
        started = await start(suffix="dash", n_epochs="2")
        assert started.status_code == 303, started.text
        job_id = started.headers["location"].rsplit("/", 1)[1]
    async with _sdk(platform.url, tenant) as sdk:
        assert [f.id async for f in sdk.files.list(purpose="fine-tune")] == [file_id]
        job = await sdk.fine_tuning.jobs.retrieve(job_id)
        assert (job.training_file, job.suffix, job.status, job.hyperparameters.n_epochs) == (
            file_id, "dash", "validating_files", 2)
        await sdk.fine_tuning.jobs.cancel(job_id)
    async with dashboard(platform.url, other_tenant.secret) as (http, csrf):
        theirs = await http.post("/dashboard/fine-tuning", data={"csrf": csrf, "model": STUB_MODEL,
                                                                 "training_file": file_id})
        assert theirs.status_code == 400 and "is not one of your files" in theirs.text


async def test_auto_epochs_reserve_a_bound_at_create_and_the_exact_worst_case_at_validation(
        platform, tenant, trainer, db, training_price):
    """Issue 30, part 8. 48 examples with "auto": the create holds bytes × 3 epochs (bytes × 10 refused
    this job under a credit it fits many times over), validation replaces it by the validated tokens ×
    the 6 resolved epochs, shown on the job and said in its events. A 10-example file fits the create's
    bound but not its 25 "auto" epochs: validation fails it with insufficient_quota, saying why, and
    gives everything back."""
    async with _sdk(platform.url, tenant) as sdk:
        file = await sdk.files.create(file=("t.jsonl", _jsonl([GOOD] * 48)), purpose="fine-tune")
        size = file.bytes
        await _prepaid(platform, tenant, 5 * size)  # bytes × 10 would be refused
        job = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id)
        assert await _reserved(db, tenant) == (3 * size, 0, [(job.id, 3 * size)])
        await _drain_validation(trainer)
        queued = await sdk.fine_tuning.jobs.retrieve(job.id)
        assert queued.status == "queued"
        assert (queued.hyperparameters.n_epochs, queued.hyperparameters.learning_rate_multiplier) == (6, 4.0)
        tokens = await db.fetchval("SELECT file_tokens FROM fine_tuning_jobs WHERE id = $1", job.id)
        assert 0 < tokens * 6 < 3 * size
        assert await _reserved(db, tenant) == (tokens * 6, 0, [(job.id, tokens * 6)])  # 1 µUSD per token
        events = [e async for e in sdk.fine_tuning.jobs.list_events(job.id)]
        assert f"{tokens * 6} micro-USD reserved" in events[1].message and events[1].data["n_epochs"] == 6
        await sdk.fine_tuning.jobs.cancel(job.id)
        assert await _reserved(db, tenant) == (0, 0, [])

        small = await sdk.files.create(file=("s.jsonl", _jsonl([GOOD] * 10)), purpose="fine-tune")
        await db.execute("UPDATE tenant_accounts SET credit_granted_micro_usd = spent_total_micro_usd + $2 "
                         "WHERE tenant_id = $1", tenant.tenant_id, 3 * small.bytes)  # left: the create's bound
        refused = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=small.id)
        assert await _reserved(db, tenant) == (3 * small.bytes, 0, [(refused.id, 3 * small.bytes)])
        await _drain_validation(trainer)
        failed = await sdk.fine_tuning.jobs.retrieve(refused.id)
        assert failed.status == "failed" and failed.error.code == "insufficient_quota"
        assert "validated token counts × the resolved epochs" in failed.error.message
        assert await _reserved(db, tenant) == (0, 0, [])
        with pytest.raises(openai.APIStatusError) as over:  # over the create's bound: a 402 saying what follows
            await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file.id)
        assert over.value.status_code == 402
        assert "validation replaces this by the token count × the resolved epochs" in over.value.message


async def test_the_queue_is_fair_across_tenants_and_says_where_a_job_stands(platform, tenant, other_tenant, trainer, db):
    """Issue 30, part 9: tenant A's two jobs were created before tenant B's one; B's is taken right after
    A's first (arrival order made it wait behind A's second), and each queued job's events say where it
    stands; with a measured speed (a job that trained 6000 tokens in 60 s), its estimated finish is
    the work ahead and its own at that speed."""
    # The queue is the base model's, shared with earlier tests: jobs they left open are set aside.
    await db.execute("UPDATE fine_tuning_jobs SET status = 'cancelled', finished_at = now() WHERE base_model_id = $1 "
                     "AND status IN ('validating_files', 'queued', 'running', 'paused')", platform.base_model_id)
    await db.execute("UPDATE fine_tuning_jobs SET status = 'failed' WHERE base_model_id = $1 AND status = 'succeeded'",
                     platform.base_model_id)  # and no speed measured before this test's
    async with _sdk(platform.url, tenant) as a, _sdk(platform.url, other_tenant) as b:
        file_a = await a.files.create(file=("a.jsonl", _jsonl([GOOD] * 12)), purpose="fine-tune")
        file_b = await b.files.create(file=("b.jsonl", _jsonl([GOOD] * 12)), purpose="fine-tune")
        a1 = await a.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file_a.id, hyperparameters={"n_epochs": 1})
        a2 = await a.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file_a.id, hyperparameters={"n_epochs": 1})
        b1 = await b.fine_tuning.jobs.create(model=STUB_MODEL, training_file=file_b.id, hyperparameters={"n_epochs": 2})
        await _drain_validation(trainer)
        a2_events = [e.message async for e in a.fine_tuning.jobs.list_events(a2.id)]
        # Second of two, then third of three once B's first job (each tenant's first before anyone's second).
        assert a2_events[0].startswith("Queued: position 3 of 3") and a2_events[1].startswith("Queued: position 2 of 2")
        b1_events = [e async for e in b.fine_tuning.jobs.list_events(b1.id)]
        assert b1_events[0].message.startswith("Queued: position 2 of 3")  # ahead of A's second
        assert b1_events[0].data["queue_position"] == 2 and b1_events[0].data["estimated_finish"] is None
        assert (await b.fine_tuning.jobs.retrieve(b1.id)).estimated_finish is None  # nothing measured yet

        take = lambda: db.fetchrow(queries.claim_fine_tuning_job, platform.base_model_id, "trn_fair", 60, 3)  # noqa: E731
        assert (await take())["id"] == a1.id
        # A measured speed: a finished job of this base model trained 6000 tokens in 60 s (100 tokens/s).
        await db.execute("UPDATE fine_tuning_jobs SET status = 'succeeded', trained_tokens = 6000, "
                         "started_at = now() - interval '61 s', finished_at = now() - interval '1 s' WHERE id = $1", a1.id)
        await trainer.refresh_queue()
        b1_events = [e async for e in b.fine_tuning.jobs.list_events(b1.id)]
        assert b1_events[0].message.startswith("Queued: position 1 of 2") and "100 tokens/s" in b1_events[0].message
        tokens = await db.fetchval("SELECT file_tokens FROM fine_tuning_jobs WHERE id = $1", b1.id)
        estimate = (await b.fine_tuning.jobs.retrieve(b1.id)).estimated_finish
        now = int(dt.datetime.now(dt.UTC).timestamp())
        assert now + 2 * tokens / 100 - 5 <= estimate <= now + 2 * tokens / 100 + 5
        assert (await take())["id"] == b1.id  # B's job before A's second, which arrived first
        assert (await take())["id"] == a2.id
