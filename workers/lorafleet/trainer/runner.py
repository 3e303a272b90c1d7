"""The trainer process (``lorafleet trainer``): validates and trains the fine-tuning jobs of one base model.

The queue is the ``fine_tuning_jobs`` table (migrations/0016), taken with ``FOR UPDATE SKIP LOCKED``:

- a job ``validating_files`` is claimed (heartbeat-guarded), its files checked line by line with the
  base model's real tokenizer and chat template (trainer/dataset.py), then ``queued`` with its
  hyperparameters resolved, or ``failed`` with the line at fault and ``param: "training_file"``.
  Validation runs on its own task, so a bad file fails at once even while this trainer trains;
- a ``queued`` job (or a ``running`` one whose trainer stopped beating for ``TRAINER_STALE_SECONDS``)
  is taken — fairly across tenants (each tenant's oldest job before anyone's second; each queued job
  told its place and an estimated finish from the measured speed, :meth:`Trainer.refresh_queue`) — ``attempts`` + 1, and trained in a spawned child process (trainer/training.py) while this
  process beats every ``TRAINER_HEARTBEAT_SECONDS``, writes the child's events to the database and
  each checkpoint to the blob store. A heartbeat that finds the job no longer ours (cancelled) stops
  the child before its next step. A job whose trainer stopped ``TRAINER_MAX_ATTEMPTS`` times fails
  with ``trainer_attempts_exhausted``; a job whose validation crashed (or whose validating trainer
  died) that many times fails with ``validation_attempts_exhausted`` (a refused file fails at once);
- a taken job resumes from its last checkpoint (on this disk, else fetched from the blob store), so
  no step is trained twice in the result, and trained tokens are billed once per job: one ledger row
  whose request id is the job id (``ON CONFLICT DO NOTHING``), written when the job ends
  (succeeded, failed or cancelled: the steps completed), in the transaction that releases the
  worst case the job reserved at create (every ending releases it; a cancel before training
  releases it in the gateway);
- a job paused by its tenant (heartbeat: no longer ``running``) checkpoints its last step, keeps its
  reservation and trained tokens, and is let go; resumed, it is queued and continues from there;
- a succeeded job's step metrics become OpenAI's result CSV, a ``fine-tune-results`` file;
- the result passes the same validation as an uploaded adapter (AdapterService.create), is
  registered for the tenant as ``ft:<base>:<suffix>:<job id>`` and loaded onto the ready workers of
  its base model (internal token) before the job says ``succeeded``: warm at once; so is each
  checkpoint, as ``ft:<base>:<suffix>:<job id>:ckpt-step-<n>`` (adapter name ``<job id>-step-<n>``).

What a tenant cannot take without paying, or from other tenants (issue 28, findings 1-5):

- every ending after training bills what was trained, through one :meth:`Trainer._bill` with the
  ledger outcome ``success``, ``cancelled`` or ``failed``; trained and validation tokens are recorded on
  the job as they are reported, so a failure anywhere after a step (registration, a crash of this
  process's job code, attempts exhausted) still bills them. Results and checkpoints are registered
  under their ``ft:`` names, which no upload can take (adapter names have no ``:``), and a rank the
  workers cannot serve is refused before a step is trained;
- the training child runs under RLIMIT_AS (``LORAFLEET_TRAINER_MAX_MEMORY_BYTES`` plus
  ``LORAFLEET_TRAINER_ADDRESS_SLACK_BYTES``) and a resident-memory watchdog here: past the limit it is
  stopped and the job fails with ``training_out_of_memory``, the host untouched;
- every ending removes the job's folder here and its checkpoints' blobs; only a job's latest checkpoint
  is kept, and a tenant's open jobs' checkpoints count against ``LORAFLEET_TENANT_MAX_CHECKPOINT_BYTES``;
  the child deletes this trainer's copies of the files once it holds them in memory.

Why not pgqueuer or procrastinate: the job table is also the API's object (status, error, trained
tokens, events), the heartbeat must stop training when the API cancels, and a stale take must resume
from a checkpoint; with a library the job would live twice (its table and ours) and the re-pick
rules above would be written around it anyway. SKIP LOCKED plus a heartbeat column is ~40 lines of SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import queue
import resource
import shutil
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import structlog
from lorafleet.adapters.blobstore import BlobStore, make_blob_store
from lorafleet.adapters.sandbox import SandboxLimits
from lorafleet.adapters.service import AdapterQuota, AdapterService
from lorafleet.billing.ledger_row import Outcome
from lorafleet.core import ids
from lorafleet.core.errors import Conflict, InsufficientQuota, InvalidRequest, LoraFleetError
from lorafleet.core.settings import TrainerSettings
from lorafleet.db import queries
from lorafleet.files.service import FileService
from lorafleet.finetune.hyperparameters import resolve
from lorafleet.finetune.jobs import bill_job, fine_tuned_model_name, hyperparameters_of, reserve_validated
from lorafleet.tenancy.storage import StorageQuota, TenantStorage
from lorafleet.trainer import training
from lorafleet.trainer.dataset import Limits, TrainingFileInvalid, validate_file
from lorafleet.trainer.render import Renderer

log = structlog.get_logger("lorafleet.trainer")
PREWARM_TIMEOUT_SECONDS = 60  # a worker fetching the result from the blob store and loading it
# What a checkpoint's `metrics` show (OpenAI's names; the full_* ones on the last step's).
CHECKPOINT_METRICS = ("train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
                      "full_valid_loss", "full_valid_mean_token_accuracy")
ALIVE_FILE = "trainer.alive"  # under LORAFLEET_DATA_DIR; infra/kustomize/trainer's probes read its age



def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _guarded_child(target: Any, spec: training.JobSpec, events: Any, cancel: Any, parent: int,
                   address_limit: int) -> None:
    """The trainer's child, which stops training when its parent dies (a killed trainer must not leave
    an orphan training on: the job's next take resumes from the checkpoint instead), under an address
    space limit: an allocation past it fails in the child (MemoryError: ``training_out_of_memory``)
    instead of waking the kernel's OOM killer, which could pick the worker or PostgreSQL."""
    if address_limit:
        resource.setrlimit(resource.RLIMIT_AS, (address_limit, address_limit))

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        cancel.set()

    threading.Thread(target=watch, daemon=True).start()
    target(spec, events, cancel)


def start_child(spec: training.JobSpec, events: Any, cancel: Any, *, target: Any = None,
                address_limit: int = 0) -> Any:
    process = training.CONTEXT.Process(
        target=_guarded_child, args=(target or training._child, spec, events, cancel, os.getpid(), address_limit),
        name="lorafleet-finetune", daemon=True)
    process.start()
    return process


def resident_bytes(pid: int) -> int:
    """A process's resident memory (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def training_memory_bytes(architecture: dict[str, Any] | None, tokens: int, longest: int, lora_r: int) -> int:
    """What training one micro-batch of ``tokens`` needs, roughly and on the high side (fp32): the frozen
    weights, the LoRA weights with their gradients and two Adam moments, each decoder layer's input kept
    for the checkpointed backward pass, one layer's intermediates (attention scores of every head, the
    MLP) and one loss chunk's logits. Used to refuse a job that cannot fit before it is queued; the
    watchdog and RLIMIT_AS enforce the limit whatever this says."""
    if not architecture:
        return 0
    hidden, inter = architecture["hidden_size"], architecture["intermediate_size"]
    layers, heads = architecture["num_hidden_layers"], architecture["num_attention_heads"]
    kv = architecture["num_key_value_heads"] * architecture["head_dim"]
    vocab = architecture.get("vocab_size") or 0
    weights = layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter) + 2 * vocab * hidden
    lora = layers * lora_r * (6 * hidden + 2 * kv + 3 * (hidden + inter))
    kept = layers * tokens * hidden
    one_layer = tokens * (12 * hidden + 6 * inter) + 3 * heads * tokens * longest  # rows × longest² scores
    loss = 4 * training.LOSS_CHUNK * vocab
    return 4 * (weights + 4 * lora + kept + one_layer + loss) + 512 * 1024**2  # + the interpreter and torch


class Trainer:
    def __init__(self, settings: TrainerSettings, pool: asyncpg.Pool, *, blobs: BlobStore | None = None,
                 trainer_id: str | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.blobs = blobs or make_blob_store(settings)
        self.adapters = AdapterService(
            pool, self.blobs, SandboxLimits(max_files=settings.max_adapter_files, max_bytes=settings.max_upload_bytes),
            quota=AdapterQuota(settings.tenant_max_adapters, settings.tenant_max_adapter_bytes), concurrent_inspections=1)
        self.trainer_id = trainer_id or ids.new_id("trn")
        self.model_path = settings.resolved_model_path
        self.root = settings.data_path / "fine-tuning"
        self.limits = Limits(max_example_tokens=settings.fine_tuning_max_example_tokens,
                             max_total_tokens=settings.fine_tuning_max_file_tokens)
        # Result files are the tenant's files; what the platform writes is counted, never refused (within_quota
        # False), so the quota's figures here only name the limits the gateway enforces on uploads.
        self.files = FileService(pool, self.blobs, TenantStorage(pool, "files", StorageQuota(
            2**62, 2**31 - 1, 2**62), noun="files"))
        self.child_target: Any = training._child  # what the spawned child runs (a test gives a memory hog)
        self._renderer: Renderer | None = None
        self.base_model_id: str | None = None
        self.base_model: str = settings.model_name

    # ---- the loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        alive = asyncio.create_task(self._alive_loop(), name="trainer-alive")
        try:
            await self._find_base_model(stop)
            validating = asyncio.create_task(self._validation_loop(stop), name="fine-tuning-validation")
            try:
                while not stop.is_set():
                    if not await self.train_next(stop):
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), self.settings.trainer_poll_seconds)
            finally:
                validating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await validating
        finally:
            alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await alive

    async def _alive_loop(self) -> None:
        """Touches DATA_DIR/trainer.alive every heartbeat: the Kubernetes probes read its age (a trainer
        has no port), so a stalled event loop — no heartbeats, its jobs retaken elsewhere — restarts."""
        path = self.settings.data_path / ALIVE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            with contextlib.suppress(OSError):
                path.touch()
            await asyncio.sleep(self.settings.trainer_heartbeat_seconds)

    async def _find_base_model(self, stop: asyncio.Event) -> None:
        """The base model's id, once its first worker registered it."""
        while self.base_model_id is None:
            row = await self.pool.fetchrow(queries.base_model_for_trainer, self.base_model)
            if row is not None:
                self.base_model_id = row["id"]
                log.info("trainer_ready", base_model=self.base_model, trainer_id=self.trainer_id)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.trainer_poll_seconds)
            if stop.is_set():
                return

    async def _validation_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                busy = await self.validate_next()
            except Exception as exc:  # noqa: BLE001 - the loop must live on; the job is re-claimed when stale
                log.error("validation_failed", error=repr(exc)[:500])
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.trainer_poll_seconds)

    # ---- events, heartbeats --------------------------------------------------------------------

    async def event(self, job_id: str, message: str, *, level: str = "info", type: str = "message",
                    data: dict[str, Any] | None = None) -> None:
        await self.pool.execute(queries.insert_fine_tuning_event, ids.fine_tuning_event_id(), job_id, level, type,
                                message[:2000], data)

    async def _beat(self, job_id: str, estimated_finish: dt.datetime | None = None) -> bool:
        return await self.pool.fetchval(queries.heartbeat_fine_tuning_job, job_id, self.trainer_id,
                                        estimated_finish) is not None

    @contextlib.asynccontextmanager
    async def _beating(self, job_id: str):
        """Heartbeats while the body runs; the yielded event is set once the job is no longer ours."""
        lost = asyncio.Event()

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.settings.trainer_heartbeat_seconds)
                if not await self._beat(job_id):
                    lost.set()
                    return

        task = asyncio.create_task(beat())
        try:
            yield lost
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _finish(self, job_id: str, status: str, *, error: dict[str, Any] | None = None,
                      fine_tuned_model: str | None = None, adapter_id: str | None = None,
                      trained_tokens: int | None = None) -> bool:
        return await self.pool.fetchval(queries.finish_fine_tuning_job, job_id, self.trainer_id, status, error,
                                        fine_tuned_model, adapter_id, trained_tokens) is not None

    # ---- validation ----------------------------------------------------------------------------

    def renderer(self) -> Renderer:
        if self._renderer is None:
            self._renderer = Renderer.for_model(self.model_path, self.settings.chat_template)
        return self._renderer

    async def _fetch_file(self, job: asyncpg.Record, param: str, target: Path) -> Path:
        row = await self.pool.fetchrow(queries.get_file, job[param], job["tenant_id"], True)
        if row is None:
            raise TrainingFileInvalid(f"the file {job[param]} no longer exists", code="invalid_file", param=param)
        await asyncio.to_thread(self.blobs.fetch, row["blob_key"], target)
        return target

    async def validate_next(self) -> bool:
        """Check one job's files; False when none waits."""
        if self.base_model_id is None:
            return False
        settings = self.settings
        for failed in await self.pool.fetch(queries.fail_exhausted_validations, self.base_model_id,
                                            settings.trainer_stale_seconds, settings.trainer_max_attempts):
            await self._bill(failed, 0, Outcome.FAILED)  # nothing trained: the reservation goes back
            await self.event(failed["id"], "The job failed: checking its files failed too many times.", level="error")
        job = await self.pool.fetchrow(queries.claim_validation, self.base_model_id, self.trainer_id,
                                       settings.trainer_stale_seconds, settings.trainer_max_attempts)
        if job is None:
            return False
        job_id = job["id"]
        folder = self.root / job_id / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            async with self._beating(job_id):
                hp = hyperparameters_of(job["hyperparameters"])
                # As the gateway checks at create (a job created before it did, or a model whose workers changed).
                max_rank = await self.pool.fetchval(queries.base_model_max_lora_rank, self.base_model_id)
                if hp.lora_r > (max_rank or settings.max_lora_rank):
                    raise InvalidRequest(f"lora_r {hp.lora_r} is above the workers' max_lora_rank of "
                                         f"{max_rank or settings.max_lora_rank}", param="lora_r")
                limits = Limits(**{**self.limits.__dict__, "max_seconds": settings.fine_tuning_validation_seconds})
                training_path = await self._fetch_file(job, "training_file", folder / "training.jsonl")
                summary = await asyncio.to_thread(validate_file, training_path, await asyncio.to_thread(self.renderer),
                                                  limits, train_on_inputs=hp.train_on_inputs)
                if job["validation_file"]:
                    valid_path = await self._fetch_file(job, "validation_file", folder / "validation.jsonl")
                    # At most the training file's tokens: its passes are bounded by it (issue 28, finding 4).
                    valid = await asyncio.to_thread(
                        validate_file, valid_path, self.renderer(),
                        Limits(**{**limits.__dict__, "min_examples": 1, "max_total_tokens": summary.total_tokens}),
                        param="validation_file")
                    summary_longest = max(summary.longest_example_tokens, valid.longest_example_tokens)
                    validation_tokens = valid.total_tokens
                else:
                    summary_longest, validation_tokens = summary.longest_example_tokens, 0
                need = await self._memory_needed(max(settings.trainer_tokens_per_step, summary_longest),
                                                 summary_longest, hp.lora_r)
                if need > settings.trainer_max_memory_bytes:
                    raise TrainingFileInvalid(
                        f"training its longest example ({summary_longest} tokens) at lora_r {hp.lora_r} needs about "
                        f"{need >> 20} MiB, more than the {settings.trainer_max_memory_bytes >> 20} MiB a job may use; "
                        "shorten the longest examples or lower lora_r", code="exceeds_trainer_memory")
                resolved = resolve(hp, summary.n_examples)
        except LoraFleetError as exc:
            if await self._finish(job_id, "failed", error={"code": exc.code or "invalid_file", "message": exc.message,
                                                           "param": exc.param}):
                await self._bill(job, 0, Outcome.FAILED)
                await self.event(job_id, f"Validation failed: {exc.message}", level="error")
            return True
        except Exception as exc:  # noqa: BLE001 - a crash, not a refusal: retried until trainer_max_attempts
            log.exception("fine_tuning_validation_crashed", job_id=job_id, attempt=job["attempts"])
            if await self.pool.fetchval(queries.release_validation, job_id, self.trainer_id) is not None:
                await self.event(job_id, f"Checking the files failed (take {job['attempts']} of "
                                         f"{settings.trainer_max_attempts}): {type(exc).__name__}: {str(exc)[:300]}",
                                 level="warn")
            return True
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        shown = {"n_epochs": resolved.n_epochs, "batch_size": resolved.batch_size,
                 "learning_rate_multiplier": resolved.learning_rate_multiplier}
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                # Queued only with the exact worst case reserved (issue 30, part 8): the create's bound is
                # replaced by the validated tokens × the resolved epochs; a cancel meanwhile keeps it released.
                queued = await connection.fetchval(queries.validated_fine_tuning_job, job_id, shown,
                                                   summary.n_examples, summary.total_tokens) is not None
                reserved = (await reserve_validated(connection, job, summary.total_tokens, validation_tokens,
                                                    resolved.n_epochs) if queued else 0)
        except InsufficientQuota as exc:
            if await self._finish(job_id, "failed", error={"code": exc.code or "insufficient_quota",
                                                           "message": exc.message, "param": None}):
                await self._bill(job, 0, Outcome.FAILED)
                await self.event(job_id, f"Validation failed: {exc.message}", level="error")
            return True
        if queued:
            await self.event(job_id, f"Files validated: {summary.n_examples} examples, {summary.total_tokens} tokens; "
                                     f"{resolved.n_epochs} epochs of batches of {resolved.batch_size}, learning rate "
                                     f"{resolved.learning_rate:g} (multiplier {resolved.learning_rate_multiplier:g}); "
                                     f"{reserved} micro-USD reserved. Job queued.",
                             data={"n_epochs": resolved.n_epochs, "batch_size": resolved.batch_size,
                                   "learning_rate_multiplier": resolved.learning_rate_multiplier,
                                   "learning_rate": resolved.learning_rate, "reserved_micro_usd": reserved})
            with contextlib.suppress(Exception):  # information, as at a take
                await self.refresh_queue()
        return True

    # ---- the queue as the tenants see it ---------------------------------------------------------

    async def refresh_queue(self) -> None:
        """Each queued job's place (in the order the trainers take them: fair across tenants) and its
        estimated finish from the measured speed (issue 30, part 9): tokens a second of this base model's
        recent jobs, after what the running jobs have left (their own estimate) and the work ahead of it.
        A job whose place changed is told so in an event; with no measured speed yet, no estimate."""
        rows = await self.pool.fetch(queries.fine_tuning_queue, self.base_model_id)
        if not rows:
            return
        speed = await self.pool.fetchval(queries.measured_training_speed, self.base_model_id)
        running = await self.pool.fetchrow(queries.fine_tuning_running, self.base_model_id)
        now = dt.datetime.now(dt.UTC)
        start = max(running["until"] or now, now)
        for row in rows:
            finish = start + dt.timedelta(seconds=int(row["work_through"]) / speed) if speed else None
            if await self.pool.fetchval(queries.set_fine_tuning_queue_position, row["id"], row["position"],
                                        finish) is None or row["position"] == row["queue_position"]:
                continue
            ahead = row["position"] - 1
            message = (f"Queued: position {row['position']} of {row['queued']} for this base model "
                       f"({ahead} job{'s' if ahead != 1 else ''} ahead, {running['running']} training now)")
            if finish is not None:
                message += f"; estimated finish {finish:%Y-%m-%d %H:%M:%S} UTC at {speed:.0f} tokens/s measured"
            await self.event(row["id"], message, data={
                "queue_position": row["position"], "queued": row["queued"], "running": running["running"],
                "estimated_finish": int(finish.timestamp()) if finish else None,
                "tokens_per_second": round(speed, 1) if speed else None})

    # ---- training ------------------------------------------------------------------------------

    async def train_next(self, stop: asyncio.Event | None = None) -> bool:
        """Take one job from the queue and see it to its end; False when none waits."""
        if self.base_model_id is None:
            return False
        settings = self.settings
        for failed in await self.pool.fetch(queries.fail_exhausted_fine_tuning_jobs, self.base_model_id,
                                            settings.trainer_stale_seconds, settings.trainer_max_attempts):
            # What its takes trained (recorded as reported) is billed; its checkpoints and folder go.
            await self._bill(failed, failed["trained_tokens"] or 0, Outcome.FAILED, failed["validation_tokens"] or 0)
            await self.event(failed["id"], "The job failed: its trainer stopped too many times.", level="error")
            await self._cleanup(failed["id"], self.root / failed["id"])
        for left in await self.pool.fetch(queries.cancelled_paused_leftovers, self.base_model_id):
            await self._cleanup(left["id"], self.root / left["id"])  # cancelled while paused: billed by the gateway
        job = await self.pool.fetchrow(queries.claim_fine_tuning_job, self.base_model_id, self.trainer_id,
                                       settings.trainer_stale_seconds, settings.trainer_max_attempts)
        if job is None:
            return False
        with contextlib.suppress(Exception):  # the queue's places are information: never the job's failure
            await self.refresh_queue()
        try:
            await self._train(job, stop or asyncio.Event())
        except Exception as exc:  # noqa: BLE001 - a job's failure is the job's, not the trainer's
            log.exception("fine_tuning_job_failed", job_id=job["id"])
            message = exc.message if isinstance(exc, LoraFleetError) else f"{type(exc).__name__}: {str(exc)[:300]}"
            code = exc.code if isinstance(exc, LoraFleetError) else "training_failed"
            # Whatever failed, the steps already trained are billed (recorded on the job as they were reported):
            # a failure after training, e.g. at registration, must not make the training free.
            progress = await self.pool.fetchrow(queries.fine_tuning_progress, job["id"])
            trained, validated = (progress["trained_tokens"] or 0, progress["validation_tokens"] or 0) if progress else (0, 0)
            if await self._finish(job["id"], "failed", error={"code": code, "message": message, "param": None},
                                  trained_tokens=trained):
                await self._bill(job, trained, Outcome.FAILED, validated)
                await self.event(job["id"], f"The job failed: {message}", level="error")
            elif await self.pool.fetchval(queries.fine_tuning_job_status, job["id"]) == "cancelled":
                await self._bill(job, trained, Outcome.CANCELLED, validated)  # cancelled meanwhile: billed all the same
            if await self.pool.fetchval(queries.fine_tuning_job_status, job["id"]) != "running":
                await self._cleanup(job["id"], self.root / job["id"])
        return True

    async def _memory_needed(self, tokens: int, longest: int, lora_r: int) -> int:
        row = await self.pool.fetchrow(queries.base_model_architecture, self.base_model_id)
        architecture = row["architecture"] if row is not None else None
        if architecture is None:  # the base model's workers did not say: the trainer's own copy does
            from lorafleet.adapters.architecture import model_architecture

            with contextlib.suppress(Exception):
                architecture = msgspec.to_builtins(await asyncio.to_thread(model_architecture, self.model_path))
        return training_memory_bytes(architecture, tokens, longest, lora_r)

    async def _restore_checkpoint(self, job_id: str, output: Path) -> None:
        """The last checkpoint from the blob store, when this disk has none (another trainer's machine)."""
        if training.latest_checkpoint(output) is not None:
            return
        row = await self.pool.fetchrow(queries.latest_fine_tuning_checkpoint, job_id)
        if row is None:
            return
        archive = output / "restore.tar"
        await asyncio.to_thread(self.blobs.fetch, row["sha256"], archive)
        target = output / training.CHECKPOINTS
        target.mkdir(parents=True, exist_ok=True)

        def extract() -> None:
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")

        await asyncio.to_thread(extract)
        archive.unlink(missing_ok=True)

    async def _save_checkpoint(self, job: asyncpg.Record, output: Path, step: int, metrics: dict[str, Any]) -> None:
        folder = output / training.CHECKPOINTS / f"step-{step:06d}"
        archive = output / f"step-{step:06d}.tar"

        def pack() -> str:
            with tarfile.open(archive, "w") as tar:
                tar.add(folder, arcname=folder.name)
            return _sha256(archive)

        sha256 = await asyncio.to_thread(pack)
        size = archive.stat().st_size
        try:
            # The tenant's open jobs' checkpoints (their latest only, see below) against its own quota, before
            # the bytes are stored: a many-epoch rank-64 job must not fill the disk the database is on.
            held = await self.pool.fetchval(queries.tenant_checkpoint_bytes, job["tenant_id"], job["id"])
            if held + size > self.settings.tenant_max_checkpoint_bytes:
                raise LoraFleetError(f"this checkpoint ({size} bytes) would take the account's fine-tuning checkpoints "
                                     f"past its limit of {self.settings.tenant_max_checkpoint_bytes} bytes",
                                     code="checkpoint_quota_exceeded")
            await asyncio.to_thread(self.blobs.put, sha256, archive)
        finally:
            archive.unlink(missing_ok=True)
        name = f"{fine_tuned_model_name(job['model'], job['suffix'], job['id'])}:ckpt-step-{step}"
        shown = {key: metrics[key] for key in CHECKPOINT_METRICS if key in metrics}
        # A resume needs only the latest checkpoint: the earlier ones' resume state goes, here and in the store.
        # One transaction: nobody ever sees two live checkpoints of a job (nor none).
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute(queries.insert_fine_tuning_checkpoint, ids.fine_tuning_checkpoint_id(), job["id"],
                                     step, {"step": step, **shown}, name, sha256, size)
            retired = await connection.fetch(queries.retire_checkpoint_blobs, job["id"], step)
        for row in retired:
            with contextlib.suppress(LoraFleetError, OSError):
                await asyncio.to_thread(self.blobs.delete, row["sha256"])
        for older in (output / training.CHECKPOINTS).glob("step-*"):
            if older.name < folder.name:
                await asyncio.to_thread(shutil.rmtree, older, True)
        await self._register(job, folder, output / f"register-{step}", name, name, checkpoint=True)

    async def _register(self, job: asyncpg.Record, adapter_dir: Path, workdir: Path, adapter_name: str,
                        fine_tuned_model: str, *, checkpoint: bool = False) -> str | None:
        """The adapter in ``adapter_dir`` through the upload's validation into the blob store, registered
        for the tenant as ``fine_tuned_model``; its adapter id (an earlier take's, if it registered it).
        ``adapter_name`` is the ``ft:`` name itself: no upload can take it (adapter names have no ``:``),
        so a tenant cannot make its own job's registration fail after training (issue 28, finding 1)."""
        workdir.mkdir(parents=True, exist_ok=True)
        parts = []  # the upload path's files, in its work folder: the same validation as an upload
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            await asyncio.to_thread(shutil.copyfile, adapter_dir / name, workdir / name)
            parts.append((name, workdir / name))
        try:
            adapter = await self.adapters.create(job["tenant_id"], adapter_name, job["model"], parts, workdir,
                                                 fine_tuned_model=fine_tuned_model)
            return adapter.id
        except Conflict as exc:  # registered by an earlier take that stopped before the job was marked
            row = await self.pool.fetchrow(queries.resolve_fine_tuned_model, job["tenant_id"], fine_tuned_model)
            if row is not None:
                return row["id"]
            if not checkpoint:
                raise
            await self.event(job["id"], f"Checkpoint {fine_tuned_model} is not servable: {exc.message}", level="warn")
            return None
        except LoraFleetError as exc:
            if not checkpoint:
                raise
            await self.event(job["id"], f"Checkpoint {fine_tuned_model} is not servable: {exc.message}", level="warn")
            return None
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _train(self, job: asyncpg.Record, stop: asyncio.Event) -> None:
        job_id, settings = job["id"], self.settings
        output = self.root / job_id
        output.mkdir(parents=True, exist_ok=True)
        (output / training.PAUSE_FILE).unlink(missing_ok=True)
        if job["attempts"] == 1 and not job["trained_tokens"]:
            await self.event(job_id, "Fine-tuning job started")
        else:  # a take after a stopped trainer, or after a pause (takes start over at resume)
            await self.event(job_id, f"Fine-tuning job resumed (take {job['attempts']})")
        training_path = await self._fetch_file(job, "training_file", output / "training.jsonl")
        validation_path = (await self._fetch_file(job, "validation_file", output / "validation.jsonl")
                           if job["validation_file"] else None)
        await self._restore_checkpoint(job_id, output)
        spec = training.JobSpec(
            model_path=str(self.model_path), training_file=str(training_path), output_dir=str(output),
            hyperparameters=hyperparameters_of(job["hyperparameters"]),
            validation_file=str(validation_path) if validation_path else None, seed=job["seed"],
            checkpoint_every=settings.trainer_checkpoint_steps, limits=self.limits,
            chat_template=settings.chat_template, threads=settings.trainer_threads,
            tokens_per_step=settings.trainer_tokens_per_step, validation_sample=settings.trainer_validation_sample,
            remove_inputs=True)
        events, cancel = training.CONTEXT.Queue(), training.CONTEXT.Event()
        process = start_child(spec, events, cancel, target=self.child_target,
                              address_limit=settings.trainer_max_memory_bytes + settings.trainer_address_slack_bytes)
        trained_tokens, validation_tokens, metrics = 0, 0, {}
        outcome: dict[str, Any] | None = None
        lost = stopping = False
        next_beat = time.monotonic() + settings.trainer_heartbeat_seconds
        estimated_finish: dt.datetime | None = None
        try:
            while True:
                try:
                    event = await asyncio.to_thread(events.get, True, 0.2)
                except queue.Empty:
                    event = None
                if event is not None:
                    kind = event.get("type")
                    if kind in ("result", "error"):
                        outcome = event
                        break
                    data = event.get("data") or {}
                    if kind == "metrics":
                        metrics = data
                        trained_tokens = int(data.get("trained_tokens", trained_tokens))
                        validation_tokens = int(data.get("validation_tokens", validation_tokens))
                        # On the job as it trains: whatever ends it later (even this process), this is billed.
                        await self.pool.execute(queries.record_fine_tuning_progress, job_id, trained_tokens,
                                                validation_tokens)
                        if data.get("eta_seconds") is not None:
                            estimated_finish = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=data["eta_seconds"])
                    elif "step" in data and event.get("message", "").startswith("Checkpoint saved"):
                        await self._save_checkpoint(job, output, int(data["step"]), metrics)
                    await self.event(job_id, event.get("message", ""), level=event.get("level", "info"),
                                     type=kind if kind in ("message", "metrics") else "message", data=event.get("data"))
                if time.monotonic() >= next_beat and not (lost or stopping):
                    next_beat = time.monotonic() + settings.trainer_heartbeat_seconds
                    if not await self._beat(job_id, estimated_finish):
                        lost = True
                        if await self.pool.fetchval(queries.fine_tuning_job_status, job_id) == "paused":
                            (output / training.PAUSE_FILE).touch()  # the child checkpoints before it stops
                        cancel.set()  # cancelled, paused (or taken by another trainer): stop before the next step
                if stop.is_set() and not stopping:
                    stopping = True
                    cancel.set()
                if resident_bytes(process.pid) > settings.trainer_max_memory_bytes:
                    process.kill()  # the job's limit, enforced before the kernel's OOM killer picks anyone
                    await asyncio.to_thread(process.join, 10)
                    outcome = {"type": "error", "error": {
                        "code": training.OUT_OF_MEMORY, "param": None,
                        "message": f"training needed more than the {settings.trainer_max_memory_bytes >> 20} MiB "
                                   "of memory a job may use; shorten the longest examples or lower lora_r"}}
                    break
                if event is None and not process.is_alive():
                    with contextlib.suppress(queue.Empty):
                        outcome = events.get(timeout=1)
                    if outcome is None or outcome.get("type") not in ("result", "error"):
                        outcome = {"type": "error", "error": {
                            "code": "training_failed", "param": None,
                            "message": f"the training process ended with exit code {process.exitcode}"}}
                    break
        finally:
            if process.is_alive():
                cancel.set()
                await asyncio.to_thread(process.join, 30)
                if process.is_alive():
                    process.kill()
        await self._conclude(job, output, outcome, trained_tokens, lost=lost, stopping=stopping,
                             validation_tokens=validation_tokens)

    async def _conclude(self, job: asyncpg.Record, output: Path, outcome: dict[str, Any], trained_tokens: int, *,
                        lost: bool, stopping: bool, validation_tokens: int = 0) -> None:
        job_id = job["id"]
        if outcome["type"] == "result":
            trained_tokens = int(outcome["data"]["trained_tokens"])
            validation_tokens = int(outcome["data"].get("validation_tokens", validation_tokens))
            await self.pool.execute(queries.record_fine_tuning_progress, job_id, trained_tokens, validation_tokens)
        status = await self.pool.fetchval(queries.fine_tuning_job_status, job_id)
        if lost and status == "paused":
            # Paused: what was trained stays recorded (billed when the job ends, once), the checkpoint the child
            # saved at its last step is in the blob store (resume starts there), the reservation is kept.
            await self.pool.execute(queries.record_fine_tuning_progress, job_id, trained_tokens, validation_tokens)
            if await self.pool.fetchval(queries.let_go_paused_fine_tuning_job, job_id, self.trainer_id) is not None:
                step = (outcome.get("data") or {}).get("steps_completed")
                await self.event(job_id, f"Job paused after step {step}: {trained_tokens} tokens trained; resume "
                                         "continues from this step's checkpoint")
                await asyncio.to_thread(shutil.rmtree, output, True)
                return
            status = await self.pool.fetchval(queries.fine_tuning_job_status, job_id)  # cancelled meanwhile
        if lost:
            if status == "cancelled":  # the tenant cancelled: the steps completed are billed, no model
                await self.pool.execute(queries.record_fine_tuning_progress, job_id, trained_tokens, validation_tokens)
                await self._bill(job, trained_tokens, Outcome.CANCELLED, validation_tokens)
                await self.event(job_id, f"Training stopped after cancellation: {trained_tokens} tokens trained")
                await self._cleanup(job_id, output)
            else:  # another trainer holds it now (its checkpoints are in the blob store): only this disk's copy goes
                await asyncio.to_thread(shutil.rmtree, output, True)
            return
        if stopping and (outcome["type"] != "result" or outcome["data"]["status"] != "succeeded"):
            if await self.pool.fetchval(queries.requeue_fine_tuning_job, job_id, self.trainer_id) is not None:
                await self.event(job_id, "The trainer stopped; the job is queued again and resumes from its last "
                                         "checkpoint")
            return
        if outcome["type"] == "error":
            error = outcome["error"]
            if await self._finish(job_id, "failed", error=error, trained_tokens=trained_tokens):
                await self._bill(job, trained_tokens, Outcome.FAILED, validation_tokens)
                await self.event(job_id, f"The job failed: {error['message']}", level="error")
            await self._cleanup(job_id, output)
            return
        result = outcome["data"]
        if result["status"] != "succeeded":
            return
        fine_tuned_model = fine_tuned_model_name(job["model"], job["suffix"], job_id)
        adapter_id = await self._register(job, Path(result["adapter_dir"]), output / "register", fine_tuned_model,
                                          fine_tuned_model)
        await self._prewarm(job, adapter_id)
        await self._write_results(job, output)
        if await self._finish(job_id, "succeeded", fine_tuned_model=fine_tuned_model, adapter_id=adapter_id,
                              trained_tokens=trained_tokens):
            await self._bill(job, trained_tokens, Outcome.SUCCESS, validation_tokens)
            await self.event(job_id, f"New fine-tuned model created: {fine_tuned_model}")
            await self.event(job_id, "The job has successfully completed")
            await self._cleanup(job_id, output)
        elif await self.pool.fetchval(queries.fine_tuning_job_status, job_id) == "cancelled":
            # Cancelled in the last moment: the steps were trained all the same, and are billed once.
            await self._bill(job, trained_tokens, Outcome.CANCELLED, validation_tokens)
            await self._cleanup(job_id, output)

    async def _write_results(self, job: asyncpg.Record, output: Path) -> str:
        """The step metrics as OpenAI's result file (``step,train_loss,train_accuracy,valid_loss,
        valid_mean_token_accuracy``; a value not measured at a step is empty), stored as the tenant's file of
        purpose ``fine-tune-results`` and named in the job's ``result_files``. From the job's metrics events,
        so the steps of every take of a resumed job are there, each once (the last report of a step wins).
        Counted in the tenant's files but never refused: the platform wrote it."""
        steps: dict[int, dict[str, Any]] = {}
        for row in await self.pool.fetch(queries.fine_tuning_step_metrics, job["id"]):
            data = row["data"] or {}
            if isinstance(data, str):
                data = msgspec.json.decode(data)
            if "step" in data:
                steps[int(data["step"])] = data

        def cell(value: Any) -> str:
            return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)

        lines = ["step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"]
        lines += [",".join(cell(v) for v in (step, data.get("train_loss"), data.get("train_mean_token_accuracy"),
                                              data.get("valid_loss"), data.get("valid_mean_token_accuracy")))
                  for step, data in sorted(steps.items())]
        path = output / "step_metrics.csv"
        path.write_text("\n".join(lines) + "\n")
        blob_key, file_id = await self.files.put_blob(path)
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                await self.files.record(connection, job["tenant_id"], "fine-tune-results", "step_metrics.csv",
                                        path.stat().st_size, blob_key, file_id=file_id, within_quota=False)
                await connection.execute(queries.set_fine_tuning_result_file, job["id"], file_id)
        except BaseException:
            await self.files.forget_blob(blob_key)
            raise
        return file_id

    async def _prewarm(self, job: asyncpg.Record, adapter_id: str) -> int:
        """Loads the result onto the ready workers of its base model before the job says ``succeeded``, so
        the tenant's first call is warm (the gateway routes by residency). The trainer does it, not a
        gateway: only the process that flips the status can order "loaded" before "succeeded", and a
        gateway noticing the job later would race that first call. Every ready worker, not one: which
        one a gateway picks for a cold adapter is the gateway's placement, and a copy in each engine's
        CPU LRU is cheap (evicted when cold). A worker that fails or none running (scaled to zero)
        only means a cold first load: the job still succeeds. The number of workers that loaded it."""
        token = self.settings.internal_token
        rows = await self.pool.fetch(queries.ready_workers_of_base_model, job["base_model_id"],
                                     self.settings.trainer_stale_seconds)
        if not token or not rows:
            await self.event(job["id"], f"Not pre-warmed: no {job['model']} worker is running; the first request "
                                        "starts one and loads the model")
            return 0
        headers = {"Authorization": f"Bearer {token}"}

        async def one(http: aiohttp.ClientSession, url: str) -> bool:
            try:
                async with http.post(f"{url}/lorafleet/adapters/{adapter_id}/prewarm", params={"load": "1"},
                                     headers=headers) as response:
                    return response.status == 200 and bool((await response.json()).get("loaded"))
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("fine_tuned_prewarm_failed", job_id=job["id"], worker=url, error=repr(exc)[:300])
                return False

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PREWARM_TIMEOUT_SECONDS)) as http:
            loaded = sum(await asyncio.gather(*(one(http, row["url"]) for row in rows)))
        await self.event(job["id"], f"Model loaded on {loaded} of {len(rows)} {job['model']} workers",
                         level="info" if loaded else "warn")
        return loaded

    async def _bill(self, job: asyncpg.Record | dict[str, Any], trained_tokens: int,
                    outcome: Outcome = Outcome.SUCCESS, validation_tokens: int = 0) -> None:
        """The job's end in money, whatever the ending (finetune/jobs.py ``bill_job``)."""
        await bill_job(self.pool, job, trained_tokens, outcome, validation_tokens)

    async def _cleanup(self, job_id: str, output: Path) -> None:
        """The job is over (every ending: succeeded, failed, cancelled): its local folder (the copies of its
        files, checkpoints, the final adapter) and its checkpoints' resume state in the blob store go. What
        the tenant keeps is registered adapters, counted in its adapter quota."""
        for row in await self.pool.fetch(queries.retire_checkpoint_blobs, job_id, 2**31 - 1):
            with contextlib.suppress(LoraFleetError, OSError):
                await asyncio.to_thread(self.blobs.delete, row["sha256"])
        await asyncio.to_thread(shutil.rmtree, output, True)


async def run_trainer(settings: TrainerSettings, stop: asyncio.Event | None = None) -> None:
    """``lorafleet trainer``: until SIGTERM/SIGINT (a job in training is handed back to the queue)."""
    import signal

    from lorafleet.db import create_pool

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    pool = await create_pool(settings.database_url, max_size=4)
    try:
        await Trainer(settings, pool).run(stop)
    finally:
        await pool.close()
