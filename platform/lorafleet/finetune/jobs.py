"""Fine-tuning jobs as the API shows them (OpenAI's shapes), and what the gateway does to them.

A job is created ``validating_files``; a trainer (trainer/runner.py) checks its files with the base
model's real tokenizer and chat template, and queues it (or fails it with the line at fault), then a
trainer takes it from the queue (``running``) and ends it ``succeeded``, ``failed`` or ``cancelled``;
a queued or running job can be ``paused`` (its trainer checkpoints and lets go) and resumed (queued).
Cancelling is immediate here; the trainer sees it on its next heartbeat and stops training.

Creating a job reserves a bound ((training + validation file bytes) × epochs at the training price,
billing/pricing.py ``training_worst_case_micro_usd``; ``"auto"`` epochs count as ``CREATE_AUTO_EPOCHS``)
in ``reservations`` under the job id, the request id of its ledger row, so open jobs and requests
together never spend past the limit. Validation replaces it by the exact worst case (the validated
token counts × the resolved epochs, :func:`reserve_validated`) before the job is queued, failing the job
with ``insufficient_quota`` when that does not fit: nothing is trained before then, so the create's
bound need not cover "auto"'s largest epoch count (issue 30, part 8: bytes × 10 epochs refused jobs
that fit many times over). The job's end releases it (runner.py ``_bill``), a cancel before training at once.

Every read names the tenant: another tenant's job, its events and checkpoints are answered exactly
like a job that never existed (404).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from lorafleet.adapters.architecture import SUPPORTED_MODULES
from lorafleet.billing.ledger_row import Endpoint, LedgerRow, Outcome, column_arrays
from lorafleet.billing.pricing import training_cost_pico_usd, training_worst_case_micro_usd
from lorafleet.core import ids
from lorafleet.core.errors import Conflict, InsufficientQuota, InvalidRequest, NotFound, RateLimited
from lorafleet.db import queries
from lorafleet.finetune.hyperparameters import (
    DEFAULT_EPOCHS,
    DEFAULT_TARGETS,
    MAX_ALPHA,
    MAX_BATCH_SIZE,
    MAX_DROPOUT,
    MAX_EPOCHS,
    MAX_MULTIPLIER,
    MAX_RANK,
    Hyperparameters,
    resolve,
)
from msgspec import Meta

SUFFIX_PATTERN = r"^[A-Za-z0-9._-]{1,40}$"
Auto = Literal["auto"]
Status = Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]
OPEN_STATUSES = ("validating_files", "queued", "running", "paused")
# "auto" epochs at create, before the file's examples are counted: OpenAI's default. A file's bytes are
# several times its tokens (JSON keys, quotes, the role names), so bytes × 3 also bounds a small file's
# tokens × its 6-25 "auto" epochs in practice; validation reserves the exact figure before any step.
CREATE_AUTO_EPOCHS = DEFAULT_EPOCHS
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
NO_METADATA: dict[str, str] = {}  # the `metadata=null` filter (compared by identity)
MetadataFilter = dict[str, str] | None


def metadata_filter(query: Any) -> MetadataFilter:
    """OpenAI's list filter from a query string: ``metadata[k]=v`` pairs (deep-object style), or the literal
    ``metadata=null`` for jobs without metadata; None when absent. Bounded as metadata itself is."""
    pairs: dict[str, str] = {}
    plain = None
    for name, value in query.multi_items():
        if name == "metadata":
            plain = value
        elif name.startswith("metadata[") and name.endswith("]"):
            key = name[len("metadata["):-1]
            if not key or len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
                raise InvalidRequest(f"metadata filter keys are 1 to {MAX_METADATA_KEY} characters and values at "
                                     f"most {MAX_METADATA_VALUE}", param="metadata")
            pairs[key] = value
    if plain is not None:
        if plain != "null" or pairs:
            raise InvalidRequest("metadata filters as metadata[key]=value, or metadata=null alone for jobs without "
                                 "metadata", param="metadata")
        return NO_METADATA
    if len(pairs) > MAX_METADATA_PAIRS:
        raise InvalidRequest(f"at most {MAX_METADATA_PAIRS} metadata pairs in a filter", param="metadata")
    return pairs or None


# ---- request bodies ------------------------------------------------------------------------------

class HyperparametersRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """OpenAI's three (each "auto" or a number) and LoRA settings, bounded (LoraFleet extensions)."""

    n_epochs: Annotated[int, Meta(ge=1, le=MAX_EPOCHS)] | Auto = "auto"
    batch_size: Annotated[int, Meta(ge=1, le=MAX_BATCH_SIZE)] | Auto = "auto"
    learning_rate_multiplier: Annotated[float, Meta(gt=0, le=MAX_MULTIPLIER)] | Auto = "auto"
    lora_r: Annotated[int, Meta(ge=1, le=MAX_RANK, description="LoRA rank (extension).")] = 8
    lora_alpha: Annotated[float, Meta(gt=0, le=MAX_ALPHA, description="LoRA alpha (extension).")] = 16.0
    lora_dropout: Annotated[float, Meta(ge=0, le=MAX_DROPOUT, description="LoRA dropout (extension).")] = 0.0
    target_modules: Annotated[list[Literal[tuple(SUPPORTED_MODULES)]], Meta(  # type: ignore[valid-type]
        min_length=1, max_length=len(SUPPORTED_MODULES),
        description="Modules LoRA adapts (extension); default: every attention and MLP projection.")] | None = None
    train_on_inputs: Annotated[bool, Meta(description="Loss on every token, not only the assistant's (extension).")] = False

    def to_hyperparameters(self) -> Hyperparameters:
        return Hyperparameters(self.n_epochs, self.batch_size, self.learning_rate_multiplier, self.lora_r,
                               float(self.lora_alpha), float(self.lora_dropout),
                               tuple(self.target_modules or DEFAULT_TARGETS), self.train_on_inputs)


class SupervisedRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    hyperparameters: HyperparametersRequest | None = None


class MethodRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """OpenAI's three method types parse, so the ones not offered get a 400 that says why (not the validator's
    "Expected 'supervised'"); their own settings are not read."""

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedRequest | None = None
    dpo: Annotated[dict[str, Any], Meta(max_length=16)] | None = None
    reinforcement: Annotated[dict[str, Any], Meta(max_length=16)] | None = None


# Why each method OpenAI offers and we do not is refused (a 400 naming method.type).
UNOFFERED_METHODS = {
    "dpo": "method.type 'dpo' is not offered yet: preference (DPO) training is planned; use 'supervised'",
    "reinforcement": "method.type 'reinforcement' is not offered: reinforcement fine-tuning needs graders that call "
                     "models or code on every step, which this platform's trainer does not run; use 'supervised'",
}
MAX_INTEGRATIONS = 16


class JobCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: Annotated[str, Meta(min_length=1, max_length=256, description="A served base model.")]
    training_file: Annotated[str, Meta(min_length=1, max_length=64, description="A `fine-tune` file's id.")]
    validation_file: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    suffix: Annotated[str, Meta(pattern=SUFFIX_PATTERN, description="Up to 40 letters, digits, '.', '_' or '-': "
                                                                    "part of the fine-tuned model's name.")] | None = None
    seed: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None
    metadata: Annotated[dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]],
                        Meta(max_length=16)] | None = None
    method: MethodRequest | None = None
    hyperparameters: HyperparametersRequest | None = None  # deprecated by OpenAI: method.supervised.hyperparameters
    integrations: Annotated[list[Any], Meta(max_length=MAX_INTEGRATIONS,
                                            description="Not offered: empty or absent.")] | None = None


# ---- what the API answers -------------------------------------------------------------------------

class JobError(msgspec.Struct, kw_only=True):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(msgspec.Struct, kw_only=True):
    n_epochs: int | Auto
    batch_size: int | Auto
    learning_rate_multiplier: float | Auto
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: list[str]
    train_on_inputs: bool


class SupervisedMethod(msgspec.Struct, kw_only=True):
    hyperparameters: JobHyperparameters


class JobMethod(msgspec.Struct, kw_only=True):
    supervised: SupervisedMethod
    type: Literal["supervised"] = "supervised"


class FineTuningJob(msgspec.Struct, kw_only=True):
    id: str
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: JobHyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: Status
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[Any] | None
    metadata: dict[str, str] | None
    method: JobMethod
    suffix: str | None = None
    object: Literal["fine_tuning.job"] = "fine_tuning.job"


class JobPage(msgspec.Struct, kw_only=True):
    data: list[FineTuningJob]
    has_more: bool
    object: Literal["list"] = "list"


class JobEvent(msgspec.Struct, kw_only=True):
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"


class EventPage(msgspec.Struct, kw_only=True):
    data: list[JobEvent]
    has_more: bool
    object: Literal["list"] = "list"


class CheckpointMetrics(msgspec.Struct, kw_only=True, omit_defaults=True):
    step: int | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class JobCheckpoint(msgspec.Struct, kw_only=True):
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"


class CheckpointPage(msgspec.Struct, kw_only=True):
    data: list[JobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
    object: Literal["list"] = "list"


def _stamp(value: dt.datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def job_view(row: asyncpg.Record | dict[str, Any]) -> FineTuningJob:
    asked = _json(row["hyperparameters"])
    resolved = _json(row["resolved"]) or {}
    shown = {name: resolved.get(name, asked.get(name, "auto"))
             for name in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    hyperparameters = JobHyperparameters(**shown, lora_r=asked["lora_r"], lora_alpha=asked["lora_alpha"],
                                         lora_dropout=asked["lora_dropout"], target_modules=asked["target_modules"],
                                         train_on_inputs=asked["train_on_inputs"])
    error = _json(row["error"])
    return FineTuningJob(
        id=row["id"], created_at=_stamp(row["created_at"]), error=JobError(**error) if error else None,  # type: ignore[arg-type]
        fine_tuned_model=row["fine_tuned_model"], finished_at=_stamp(row["finished_at"]),
        hyperparameters=hyperparameters, model=row["model"], organization_id=row["tenant_id"],
        result_files=[row["result_file"]] if row.get("result_file") else [],
        seed=row["seed"], status=row["status"], trained_tokens=row["trained_tokens"],
        training_file=row["training_file"], validation_file=row["validation_file"],
        estimated_finish=_stamp(row["estimated_finish"]), integrations=None, metadata=_json(row["metadata"]),
        method=JobMethod(supervised=SupervisedMethod(hyperparameters=hyperparameters)), suffix=row["suffix"])


def asked_hyperparameters(hp: Hyperparameters) -> dict[str, Any]:
    return {"n_epochs": hp.n_epochs, "batch_size": hp.batch_size,
            "learning_rate_multiplier": hp.learning_rate_multiplier, "lora_r": hp.lora_r,
            "lora_alpha": hp.lora_alpha, "lora_dropout": hp.lora_dropout,
            "target_modules": list(hp.target_modules), "train_on_inputs": hp.train_on_inputs}


def hyperparameters_of(asked: dict[str, Any]) -> Hyperparameters:
    return Hyperparameters(asked["n_epochs"], asked["batch_size"], asked["learning_rate_multiplier"],
                           asked["lora_r"], asked["lora_alpha"], asked["lora_dropout"],
                           tuple(asked["target_modules"]), asked["train_on_inputs"])


def fine_tuned_model_name(base: str, suffix: str | None, job_id: str) -> str:
    """``ft:<base>:<suffix>:<job id>`` (OpenAI's spelling, the organization left out: the key's tenant is implied)."""
    return f"ft:{base}:{suffix or ''}:{job_id}"


def not_found(job_id: str) -> NotFound:
    return NotFound(f"No fine-tuning job {job_id[:100]!r}", param="fine_tuning_job_id")


async def check_budget(connection: asyncpg.Connection, tenant_id: str, worst: int, *, auto_epochs: bool = False,
                       validated: bool = False) -> None:
    """402 when a job's worst case cannot be covered next to what is spent and reserved; the account row
    stays locked (FOR UPDATE) until the caller's transaction has reserved it, as admission does.
    ``validated``: the figure is the validated token count × the resolved epochs, not the create's bound."""
    account = await connection.fetchrow(queries.fine_tuning_headroom, tenant_id)
    if account is None:
        raise InsufficientQuota("This account has no billing record; contact the operator.",
                                code="no_billing_account")
    if validated:
        what = (f"Its files validated, this job could cost up to {worst} micro-USD (the validated token counts × "
                "the resolved epochs), ")
        fix = "set a smaller n_epochs or use a smaller file."
    else:
        what = (f"This job could cost up to {worst} micro-USD (its files' bytes bound their tokens, × "
                f"{CREATE_AUTO_EPOCHS if auto_epochs else 'the'} epochs"
                f"{'; validation replaces this by the token count × the resolved epochs' if auto_epochs else ''}), ")
        fix = "set n_epochs or use a smaller file."
    limit = account["monthly_spend_limit_micro_usd"]
    if limit is not None and account["period_spent_micro_usd"] + account["reserved_micro_usd"] + worst > limit:
        raise InsufficientQuota(what + f"more than is left of your monthly spend limit; raise the limit, or {fix}")
    if account["billing_mode"] == "prepaid" and (account["credit_granted_micro_usd"] - account["spent_total_micro_usd"]
                                                 - account["reserved_micro_usd"]) < worst:
        raise InsufficientQuota(what + f"more than your remaining credits; add credits, or {fix}")


async def reserve_validated(connection: asyncpg.Connection, job: asyncpg.Record | dict[str, Any], training_tokens: int,
                            validation_tokens: int, epochs: int) -> int:
    """In the caller's transaction (the one that queues the job): the create's bound is replaced by the exact
    worst case, the validated tokens × the resolved epochs (validation at most one pass per epoch), at the
    training price in effect now. InsufficientQuota when that does not fit; the amount reserved otherwise."""
    price = await connection.fetchrow(queries.training_price, job["base_model_id"], dt.datetime.now(dt.UTC))
    worst = (training_worst_case_micro_usd(price["training_micro_usd_per_mtok"], training_tokens, validation_tokens,
                                           epochs) if price is not None and price["training_micro_usd_per_mtok"] else 0)
    await connection.execute(queries.release_fine_tuning_reservation, job["id"])
    if worst:
        await check_budget(connection, job["tenant_id"], worst, validated=True)
        await connection.execute(queries.reserve_fine_tuning_job, job["id"], job["tenant_id"], worst)
    return worst


async def bill_job(pool: asyncpg.Pool, job: asyncpg.Record | dict[str, Any], trained_tokens: int,
               outcome: Outcome = Outcome.SUCCESS, validation_tokens: int = 0) -> None:
    """The job's end in money, whatever the ending (``outcome``: success, cancelled or failed): its
    worst-case reservation (made at create) is released and, when it ran anything, one ledger row is
    written (its id is the request id: a second write changes nothing), in one transaction so the cost
    is never neither reserved nor spent. Its tokens (``prompt_tokens``) are the trained tokens plus the
    validation passes' tokens, priced in billing/pricing.py. Every ending calls this (the trainer, or the gateway cancelling a paused job); releasing is a
    DELETE, so a second call gives nothing back twice."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(queries.release_fine_tuning_reservation, job["id"])
        if trained_tokens + validation_tokens <= 0:
            return
        now = dt.datetime.now(dt.UTC)
        price = await connection.fetchrow(queries.training_price, job["base_model_id"], now)
        cost = training_cost_pico_usd(price["training_micro_usd_per_mtok"] if price else 0, trained_tokens,
                                      validation_tokens)
        started = job["started_at"] or now
        row = LedgerRow(
            request_id=job["id"], tenant_id=job["tenant_id"], api_key_id=job["api_key_id"],
            base_model_id=job["base_model_id"], model=job["model"], endpoint=Endpoint.FINE_TUNING,
            outcome=outcome, http_status={Outcome.CANCELLED: 499, Outcome.FAILED: 500}.get(outcome, 200),
            streamed=False, prompt_tokens=trained_tokens + validation_tokens,
            completion_tokens=0, worker_url=None, started_at=started, finished_at=now, ttft_ms=None,
            duration_ms=min(int((now - started).total_seconds() * 1000), 2**31 - 1),
            cost_pico_usd=cost, price_id=price["id"] if price else None)
        await connection.execute(queries.insert_usage_rows, *column_arrays([row]))


class FineTuningJobs:
    """The gateway's side of jobs: create, read, cancel — always within one tenant."""

    def __init__(self, pool: asyncpg.Pool, files: Any, *, max_open_jobs: int) -> None:
        self._pool = pool
        self._files = files
        self._max_open_jobs = max_open_jobs

    async def create(self, tenant_id: str, key_id: str, base_model_id: str, data: JobCreate) -> FineTuningJob:
        if data.integrations:
            raise InvalidRequest("integrations are not offered: the trainer has no route to outside services such as "
                                 "Weights & Biases; read the metrics from the job's events, checkpoints and result "
                                 "file instead", param="integrations", code="unsupported_parameter")
        if data.method is not None and data.method.type in UNOFFERED_METHODS:
            raise InvalidRequest(UNOFFERED_METHODS[data.method.type], param="method.type",
                                 code="unsupported_parameter")
        training_bytes = validation_bytes = 0
        for param in ("training_file", "validation_file"):
            file_id = getattr(data, param)
            if file_id is None:
                continue
            stored = await self._files.find(tenant_id, file_id)
            if stored is None:
                raise InvalidRequest(f"{param} {file_id[:64]!r} is not one of your files", param=param,
                                     code="invalid_file")
            if stored.view.purpose != "fine-tune":
                raise InvalidRequest(f"{param} {file_id[:64]!r} was uploaded with purpose {stored.view.purpose!r}, "
                                     "not 'fine-tune'", param=param, code="invalid_file_purpose")
            if param == "training_file":
                training_bytes = stored.view.bytes
            else:
                validation_bytes = stored.view.bytes
        if validation_bytes > training_bytes:
            # Validation passes are bounded by the training file (issue 28, finding 4): the trainer refuses a
            # validation file of more tokens than the training file's; bytes are what is known here.
            raise InvalidRequest(f"validation_file has {validation_bytes} bytes, more than the training file's "
                                 f"{training_bytes}; a validation file may be at most as large",
                                 param="validation_file", code="validation_file_too_large")
        method_hp = data.method.supervised.hyperparameters if data.method and data.method.supervised else None
        requested = method_hp or data.hyperparameters or HyperparametersRequest()
        hp = requested.to_hyperparameters()
        resolve(hp, 100)  # bounds of every given value (the file's size decides the "auto" ones later)
        max_rank = await self._pool.fetchval(queries.base_model_max_lora_rank, base_model_id)
        if max_rank is not None and hp.lora_r > max_rank:
            # A rank the workers cannot serve would train in full and then fail to register (issue 28, finding 1).
            where = "method.supervised.hyperparameters" if method_hp is not None else "hyperparameters"
            raise InvalidRequest(f"lora_r {hp.lora_r} is above {max_rank}, the largest rank this model's workers "
                                 "serve", param=f"{where}.lora_r")
        worst = await self._worst_case(base_model_id, training_bytes, validation_bytes,
                                       hp.n_epochs if isinstance(hp.n_epochs, int) else CREATE_AUTO_EPOCHS)
        seed = data.seed if data.seed is not None else random.randrange(2**31)
        job_id = ids.fine_tuning_job_id()
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(queries.lock_tenant_fine_tuning, tenant_id)
            open_jobs = await connection.fetchval(queries.count_open_fine_tuning_jobs, tenant_id)
            if open_jobs >= self._max_open_jobs:
                raise RateLimited(f"this account already has {open_jobs} fine-tuning jobs validating, queued or "
                                  f"running, its limit; wait for one to finish or cancel one",
                                  code="too_many_fine_tuning_jobs", headers={"Retry-After": "60"})
            if worst:
                await check_budget(connection, tenant_id, worst, auto_epochs=hp.n_epochs == "auto")
            row = await connection.fetchrow(
                queries.insert_fine_tuning_job, job_id, tenant_id, key_id, base_model_id, data.model,
                data.training_file, data.validation_file, data.suffix, seed, data.metadata,
                asked_hyperparameters(hp))
            if worst:
                await connection.execute(queries.reserve_fine_tuning_job, job_id, tenant_id, worst)
            await connection.execute(queries.insert_fine_tuning_event, ids.fine_tuning_event_id(), job_id, "info",
                                     "message", f"Validating training file: {data.training_file}", None)
        return job_view(row)

    async def _worst_case(self, base_model_id: str, training_bytes: int, validation_bytes: int, epochs: int) -> int:
        """The most a job can cost, in micro-USD, at the training price in effect now (0: free): its files'
        bytes bound their tokens; training runs ``epochs`` times, validation at most once per epoch."""
        price = await self._pool.fetchrow(queries.training_price, base_model_id, dt.datetime.now(dt.UTC))
        if price is None or not price["training_micro_usd_per_mtok"]:
            return 0
        return training_worst_case_micro_usd(price["training_micro_usd_per_mtok"], training_bytes, validation_bytes,
                                             epochs)

    async def get(self, tenant_id: str, job_id: str) -> FineTuningJob:
        row = await self._pool.fetchrow(queries.get_fine_tuning_job, job_id, tenant_id)
        if row is None:
            raise not_found(job_id)
        return job_view(row)

    async def list(self, tenant_id: str, *, after: str | None, limit: int,
                   metadata: MetadataFilter = None) -> JobPage:
        """``metadata``: pairs a job's metadata must hold, or ``NO_METADATA`` for jobs without any."""
        wanted = None if metadata is None or metadata is NO_METADATA else metadata
        rows = await self._pool.fetch(queries.list_fine_tuning_jobs, tenant_id, after, limit + 1, wanted,
                                      metadata is NO_METADATA)
        return JobPage(data=[job_view(row) for row in rows[:limit]], has_more=len(rows) > limit)

    async def cancel(self, tenant_id: str, job_id: str) -> FineTuningJob:
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(queries.cancel_fine_tuning_job, job_id, tenant_id)
            if row is not None:
                if not row["was_running"] and not row["was_paused"]:  # nothing trained: the worst case goes back now
                    await connection.execute(queries.release_fine_tuning_reservation, job_id)
                await connection.execute(queries.insert_fine_tuning_event, ids.fine_tuning_event_id(), job_id,
                                         "info", "message", "Job cancelled", None)
        if row is not None:
            if row["was_paused"]:
                # Paused and let go by its trainer: the steps it trained (recorded as reported) are billed here,
                # once, and the reservation released with it; a trainer removes its checkpoints' blobs.
                await bill_job(self._pool, row, row["trained_tokens"] or 0, Outcome.CANCELLED,
                               row["validation_tokens"] or 0)
            return job_view(row)
        job = await self.get(tenant_id, job_id)  # 404, or a job already finished
        raise InvalidRequest(f"the job is already {job.status}; only a job not finished can be cancelled",
                             param="fine_tuning_job_id", code="job_not_cancellable")

    async def pause(self, tenant_id: str, job_id: str) -> FineTuningJob:
        """A queued or running job becomes ``paused``: its trainer (on its next heartbeat) checkpoints the steps
        done and lets go; the job keeps its reservation and is billed when it ends, once."""
        moved = await self._move(queries.pause_fine_tuning_job, tenant_id, job_id, "Job paused")
        if moved is not None:
            return moved
        job = await self.get(tenant_id, job_id)
        raise InvalidRequest(f"the job is {job.status}; only a queued or running job can be paused",
                             param="fine_tuning_job_id", code="job_not_pausable")

    async def resume(self, tenant_id: str, job_id: str) -> FineTuningJob:
        """A paused job is queued again; its next take continues from the checkpoint its pause saved."""
        moved = await self._move(queries.resume_fine_tuning_job, tenant_id, job_id, "Job resumed: queued again")
        if moved is not None:
            return moved
        job = await self.get(tenant_id, job_id)
        if job.status == "paused":  # its trainer has not let go yet: the checkpoint is being saved
            raise Conflict("the job is still pausing (its trainer is saving the checkpoint); resume it in a few "
                           "seconds", param="fine_tuning_job_id", code="job_still_pausing",
                           headers={"Retry-After": "2"})
        raise InvalidRequest(f"the job is {job.status}; only a paused job can be resumed",
                             param="fine_tuning_job_id", code="job_not_resumable")

    async def _move(self, query: str, tenant_id: str, job_id: str, message: str) -> FineTuningJob | None:
        """The job moved by ``query`` (pause, resume) with its event, in one transaction; None when the
        job is not in a state the query moves."""
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(query, job_id, tenant_id)
            if row is None:
                return None
            await connection.execute(queries.insert_fine_tuning_event, ids.fine_tuning_event_id(), job_id,
                                     "info", "message", message, None)
            return job_view(row)

    async def events(self, tenant_id: str, job_id: str, *, after: str | None, limit: int) -> EventPage:
        await self.get(tenant_id, job_id)
        rows = await self._pool.fetch(queries.list_fine_tuning_events, job_id, after, limit + 1)
        return EventPage(data=[JobEvent(id=row["id"], created_at=_stamp(row["created_at"]), level=row["level"],  # type: ignore[arg-type]
                                        message=row["message"], type=row["type"], data=_json(row["data"]))
                               for row in rows[:limit]], has_more=len(rows) > limit)

    async def checkpoints(self, tenant_id: str, job_id: str, *, after: str | None, limit: int) -> CheckpointPage:
        await self.get(tenant_id, job_id)
        rows = await self._pool.fetch(queries.list_fine_tuning_checkpoints, job_id, after, limit + 1)
        data = [JobCheckpoint(id=row["id"], created_at=_stamp(row["created_at"]),  # type: ignore[arg-type]
                              fine_tuned_model_checkpoint=row["fine_tuned_model_checkpoint"],
                              fine_tuning_job_id=row["job_id"], step_number=row["step_number"],
                              metrics=msgspec.convert(_json(row["metrics"]), CheckpointMetrics))
                for row in rows[:limit]]
        return CheckpointPage(data=data, has_more=len(rows) > limit, first_id=data[0].id if data else None,
                              last_id=data[-1].id if data else None)

