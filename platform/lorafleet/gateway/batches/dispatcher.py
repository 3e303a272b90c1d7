"""The batch dispatcher: validates batches, runs their lines while the workers have headroom, ends them.

It runs in every gateway (``LORAFLEET_BATCH_DISPATCH``), not as a process of its own: a line goes
through the gateway's own routes in-process (inprocess.py), so it meets exactly the admission,
placement, failover, metering and response shape of the synchronous call, and needs no second copy
of any of them. Several dispatchers share the work through PostgreSQL:

- **validation** and **ending** of a batch are leased to one gateway (``claimed_by``/``lease_until``);
- **lines** are claimed with ``FOR UPDATE SKIP LOCKED`` and leased while they run (renewed every third
  of the lease); a dispatcher that dies leaves its lines to run again once their leases run out.

Output: each line's answer may have at most its bound (answer_bound.py, set at validation); a larger
answer is not kept — the line's error is ``response_too_large``, and its tokens, which ran, are billed.
The sum of the bounds is held in the tenant's file quota while the batch runs (service.py takes it at
create, validation sets it from the lines' own bounds, the ending gives it back as the files take their
room). A large answer waits in the blob store, a small one in its row (spool.py).

Exactly once: a line's request id is derived from the batch and the line, so when a line runs again
after its dispatcher died, the ledger's idempotent insert keeps the first run's row — the line is
billed once, and its output holds its ``custom_id`` once (a line's answer is stored by the dispatcher
holding it only). A line sent back without running (rate limited, no worker woke in time) gets a new
request id: its first try's row says nothing ran, and the next try must be billed.

Headroom: a base model's lines are fed only while its ready workers have room — at most
``batch_lines_per_worker`` in flight per worker (``batch_lines_per_worker_busy`` while interactive
requests run through this gateway) with no more than ``batch_max_waiting`` requests waiting in its
engine and its KV cache at most ``batch_max_kv_cache_usage`` full (the registry's view of each worker). In the engine, batch lines run at a larger ``priority`` (scheduled after
interactive requests); vLLM preempts only when KV blocks run out, so this backpressure is what keeps
interactive latency. With no ready worker, one line is sent: the gateway holds it while the model
wakes, as it would a synchronous request.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import structlog
from litestar.types import ASGIApp
from lorafleet.core import ids
from lorafleet.core.errors import BlobStoreUnavailable
from lorafleet.core.settings import GatewaySettings
from lorafleet.core.tasks import stop_task
from lorafleet.db import DATABASE_UNAVAILABLE, queries
from lorafleet.files.service import FileService
from lorafleet.gateway.batches.answer_bound import OUTPUT_OBJECTS
from lorafleet.gateway.batches.inprocess import Answer, call_route
from lorafleet.gateway.batches.schemas import BatchError, LineError, LineResponse, OutputLine
from lorafleet.gateway.batches.spool import INLINE_ANSWER_BYTES, AnswerSpool, answer_key
from lorafleet.gateway.batches.validation import (
    LINE_OVERHEAD_BYTES,
    ValidLine,
    limits_of,
    read_lines,
    validate_lines,
)
from lorafleet.gateway.context import BatchOrigin
from lorafleet.gateway.fleet.catalog import ModelCatalog
from lorafleet.gateway.fleet.registry import WorkerRegistry
from lorafleet.gateway.metering.writer import LedgerWriter

log = structlog.get_logger("lorafleet.batches")

VALIDATION_LEASE_SECONDS = 300.0
ENDING_LEASE_SECONDS = 300.0
IDLE_SECONDS = 0.5            # between rounds with nothing to do
MAX_ATTEMPTS = 5              # runs of one line whose dispatcher kept dying: then it fails
RETRYABLE_429 = frozenset({"rate_limit_exceeded", "concurrency_limit_exceeded", "too_many_held_requests"})
UNFINISHED = {"expired": ("batch_expired", "This request was not run before the batch expired."),
              "cancelled": ("batch_cancelled", "This request was not run: the batch was cancelled."),
              "completed": ("batch_line_not_run", "This request was not run.")}
PAGE = 50                     # lines per read when writing the files: a line's answer may be megabytes
MAX_VALIDATION_ATTEMPTS = 3   # takes of one batch's validation (a gateway that died on it): then it fails
INTERACTIVE_MEMORY_SECONDS = 1.0  # interactive traffic seen this recently still counts as running
DRAIN_SECONDS = 15.0          # on shutdown, lines in flight get this long (the gateway pod: 5 + 30 + 15 + flush < 60 s)
_encode = msgspec.json.Encoder().encode
_error_body = msgspec.json.Decoder(dict[str, Any]).decode


@dataclass(frozen=True, slots=True)
class Claimed:
    batch_id: str
    line: int
    attempts: int
    request_id: str
    tenant_id: str
    api_key_id: str
    endpoint: str
    body: bytes
    base_model_id: str
    answer_bound: int  # the most bytes of its answer that are kept


class BatchDispatcher:
    def __init__(self, app: ASGIApp, pool: asyncpg.Pool, files: FileService, catalog: ModelCatalog,
                 registry: WorkerRegistry, ledger: LedgerWriter, settings: GatewaySettings, gateway_id: str,
                 spool: AnswerSpool) -> None:
        self._app = app
        self._pool = pool
        self._files = files
        self._spool = spool
        self._catalog = catalog
        self._registry = registry
        self._ledger = ledger
        self._settings = settings
        self._gateway_id = gateway_id
        self._running: dict[tuple[str, int], tuple[Claimed, asyncio.Task[None]]] = {}
        self._in_flight: Counter[str] = Counter()  # base model → lines this gateway runs now
        self._tasks: list[asyncio.Task[None]] = []
        self._wakeup = asyncio.Event()
        self.drain_seconds = DRAIN_SECONDS
        self._interactive_until: dict[str, float] = {}  # base model → interactive traffic seen until then

    def start(self) -> None:
        """Start its rounds (again after :meth:`close`); a second start while running does nothing."""
        if any(not task.done() for task in self._tasks):
            return
        self._tasks = [asyncio.create_task(self._loop(), name="batch-dispatcher"),
                       asyncio.create_task(self._renew_loop(), name="batch-lease-renewal")]

    async def close(self) -> None:
        """Stop taking lines; give those in flight a while to finish; send the rest back to the queue.

        A line cut here has its row (``client_disconnect``, what ran) under its request id, and goes back
        under the same id: when it runs again its row is that one, so a line is never billed twice —
        at worst a line cut by a shutdown is billed for the part that ran before it."""
        for task in self._tasks:
            await stop_task(task)
        running = [task for _, task in self._running.values()]
        if running:
            await asyncio.wait(running, timeout=self.drain_seconds)
        for claimed, task in list(self._running.values()):
            await stop_task(task)
            with contextlib.suppress(*DATABASE_UNAVAILABLE, asyncpg.PostgresError):
                await self._release(claimed, 0, same_request_id=True)

    def poke(self) -> None:
        """Something changed (a batch was created or cancelled here): look now rather than at the next round."""
        self._wakeup.set()

    # ---- the rounds ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            busy = False
            try:
                busy = await self.step()
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("batch_round_failed", error=repr(exc)[:300])
            except Exception as exc:  # noqa: BLE001 - the dispatcher must survive anything
                log.error("batch_round_failed", error=repr(exc)[:500])
            if not busy:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), IDLE_SECONDS)

    async def step(self) -> bool:
        """One round: validate a batch, feed lines, end a batch. Whether there was anything to do."""
        validated = await self.validate_one()
        fed = await self.feed()
        ended = await self.end_one()
        return validated or fed or ended

    async def _renew_loop(self) -> None:
        lease = self._settings.batch_line_lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            if not self._running:
                continue
            keys = list(self._running)
            try:
                await self._pool.execute(queries.renew_batch_lines, self._gateway_id, [k[0] for k in keys],
                                         [k[1] for k in keys], lease)
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("batch_lease_renewal_failed", error=repr(exc)[:300])

    # ---- validation ----------------------------------------------------------------------------

    async def validate_one(self) -> bool:
        batch = await self._pool.fetchrow(queries.claim_batch_validation, self._gateway_id, VALIDATION_LEASE_SECONDS)
        if batch is None:
            return False
        batch_id = batch["id"]
        if batch["validation_attempts"] > MAX_VALIDATION_ATTEMPTS:
            await self._refuse(batch_id, [BatchError(code="validation_attempts_exhausted", message=(
                f"validating the input file stopped {MAX_VALIDATION_ATTEMPTS} gateways before it ended"))])
            return True
        stored = await self._files.find(batch["tenant_id"], batch["input_file_id"], expired_too=True)
        if stored is None:
            await self._refuse(batch_id, [BatchError(code="invalid_file", message="the input file was deleted before "
                                                     "the batch was validated", param="input_file_id")])
            return True
        with tempfile.TemporaryDirectory(prefix="lorafleet-batch-") as folder:
            path = Path(folder) / "input.jsonl"
            await self._files.fetch(stored, path)
            settings = self._settings
            limits = limits_of(settings)
            storage = self._files.storage

            async def resolve(model: str):  # noqa: ANN202 - the catalog's ResolvedModel
                return await self._catalog.resolve(batch["tenant_id"], model)

            errors: list[BatchError] = []
            try:
                # One transaction: the valid lines go in chunk by chunk as they are read, and all of them
                # roll back when any line is refused (or this gateway loses the batch meanwhile).
                async with self._pool.acquire() as connection, connection.transaction():
                    async def keep(chunk: list[ValidLine]) -> None:
                        await connection.copy_records_to_table("batch_lines", records=[
                            (batch_id, v.line, v.custom_id, v.base_model_id, v.body,
                             ids.batch_line_request_id(batch_id, v.line), v.answer_bound) for v in chunk],
                            columns=["batch_id", "line", "custom_id", "base_model_id", "body", "request_id",
                                     "answer_bound"])

                    with open(path, "rb") as handle:
                        lines = read_lines(handle, settings.max_request_bytes + LINE_OVERHEAD_BYTES)
                        validated = await validate_lines(lines, batch["endpoint"], limits, settings, resolve, keep)
                    count = validated.count
                    if validated.errors:
                        raise _Refused(validated.errors)
                    # The output's room, now from the lines' own bounds (for their models): the create's is
                    # the same or more unless the settings or the models changed meanwhile.
                    more = validated.output_bytes - batch["output_reserved_bytes"]
                    if more > 0 and not await storage.reserve(connection, batch["tenant_id"], more, 0):
                        raise _Refused([BatchError(
                            code="storage_quota_exceeded", param="input_file_id",
                            message=f"this batch's output may take {validated.output_bytes} bytes, more than this "
                                    "account's file quota has room for; delete files or send fewer lines")])
                    if more < 0:
                        await storage.refund(connection, batch["tenant_id"], -more, 0)
                    if await connection.fetchval(queries.batch_validated, batch_id, self._gateway_id, count,
                                                 validated.output_bytes, validated.model) is None:
                        raise _LeaseLost(batch_id)  # another gateway ended it meanwhile: roll the lines back
            except _Refused as refused:
                errors = refused.errors
            except (*DATABASE_UNAVAILABLE, BlobStoreUnavailable, _LeaseLost):
                raise  # the lease runs out and a later round tries again
            except Exception as exc:  # noqa: BLE001 - a file that breaks the validator fails, not loops
                log.error("batch_validation_crashed", batch_id=batch_id, error=repr(exc)[:500])
                errors = [BatchError(code="validation_failed", message="the input file could not be validated")]
        if errors:
            await self._refuse(batch_id, errors)
            return True
        log.info("batch_validated", batch_id=batch_id, lines=count)
        return True

    async def _refuse(self, batch_id: str, errors: list[BatchError]) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            refused = await connection.fetchrow(queries.batch_refused, batch_id, self._gateway_id,
                                                msgspec.to_builtins(errors))
            if refused is not None:  # it writes no file: the room held for its output goes back
                await self._files.storage.refund(connection, refused["tenant_id"], refused["released_bytes"],
                                                 OUTPUT_OBJECTS)
        log.info("batch_refused", batch_id=batch_id, errors=len(errors))

    # ---- lines ---------------------------------------------------------------------------------

    def headroom(self, base_model_id: str) -> int:
        """Lines this gateway may start now for the model: its ready workers' room, less what it runs.

        While interactive requests run through this gateway on the model (or did within the last
        second), each worker takes only ``batch_lines_per_worker_busy`` lines: on a CPU every line in an
        engine step slows that step for everyone, so batch lines trickle while people wait."""
        settings = self._settings
        workers = [w for w in self._registry.workers() if w.base_model_id == base_model_id and w.routable]
        if not workers:
            return max(0, 1 - self._in_flight[base_model_id])  # one line, held while the model wakes
        now = time.monotonic()
        if sum(w.in_flight for w in workers) > self._in_flight[base_model_id]:  # someone else's requests
            self._interactive_until[base_model_id] = now + INTERACTIVE_MEMORY_SECONDS
        per_worker = (settings.batch_lines_per_worker_busy if self._interactive_until.get(base_model_id, 0) > now
                      else settings.batch_lines_per_worker)
        room = sum(per_worker for w in workers
                   if w.waiting <= settings.batch_max_waiting and w.kv_cache_usage <= settings.batch_max_kv_cache_usage)
        return max(0, room - self._in_flight[base_model_id])

    async def feed(self) -> bool:
        started = 0
        for record in await self._pool.fetch(queries.batch_models_open):
            model = record["base_model_id"]
            room = self.headroom(model)
            if room <= 0:
                continue
            rows = await self._pool.fetch(queries.claim_batch_lines, self._gateway_id, model, room,
                                          self._settings.batch_line_lease_seconds)
            for row in rows:
                claimed = Claimed(row["batch_id"], row["line"], row["attempts"], row["request_id"], row["tenant_id"],
                                  row["api_key_id"], row["endpoint"], bytes(row["body"]), model,
                                  row["answer_bound"] or self._settings.batch_max_answer_bytes)
                self._in_flight[model] += 1
                task = asyncio.create_task(self._run_line(claimed), name=f"batch-line-{claimed.batch_id}-{claimed.line}")
                self._running[(claimed.batch_id, claimed.line)] = (claimed, task)
                started += 1
        return started > 0

    async def _run_line(self, claimed: Claimed) -> None:
        try:
            if claimed.attempts > MAX_ATTEMPTS:
                await self._finish(claimed, None, "batch_line_attempts_exhausted",
                                   f"this request was started {MAX_ATTEMPTS} times by dispatchers that stopped "
                                   "before it ended")
                return
            origin = BatchOrigin(claimed.batch_id, claimed.line, claimed.request_id, claimed.tenant_id,
                                 claimed.api_key_id)
            try:
                answer = await call_route(self._app, claimed.endpoint, claimed.body, origin,
                                          max_bytes=claimed.answer_bound)
            except Exception as exc:  # noqa: BLE001 - a bug in one line must not stop the others
                log.error("batch_line_crashed", batch_id=claimed.batch_id, line=claimed.line, error=repr(exc)[:300])
                await self._finish(claimed, None, "internal_error", "the gateway failed to run this request")
                return
            if answer.too_large:  # it ran (its row bills its tokens); its answer is not kept
                await self._finish(claimed, None, "response_too_large", (
                    f"the answer was {answer.size} bytes, more than the {claimed.answer_bound} this request may "
                    "have in a batch (its bound from max_tokens, n, logprobs and echo, at most "
                    f"{self._settings.batch_max_answer_bytes}); its tokens are billed. Ask for fewer tokens or "
                    "logprobs, or send it synchronously"))
                return
            retry_after = _retry_after(answer)
            if retry_after is not None:
                await self._release(claimed, retry_after)
                return
            await self._finish(claimed, answer, None, None)
        except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError, BlobStoreUnavailable) as exc:
            # Its lease runs out and another round runs it again (the ledger keeps one row).
            log.warning("batch_line_not_stored", batch_id=claimed.batch_id, line=claimed.line, error=repr(exc)[:300])
        finally:
            self._running.pop((claimed.batch_id, claimed.line), None)
            self._in_flight[claimed.base_model_id] -= 1
            if self._in_flight[claimed.base_model_id] <= 0:
                del self._in_flight[claimed.base_model_id]
            self._wakeup.set()  # room for the next line

    async def _finish(self, claimed: Claimed, answer: Answer | None, code: str | None, message: str | None) -> None:
        status = answer.status if answer is not None else None
        if answer is not None and not 200 <= answer.status < 300:
            code, message = _error_of(answer)
        body = answer.body if answer is not None else None
        key = None
        if body is not None and len(body) > INLINE_ANSWER_BYTES:  # large: to the blob store, the row keeps its key
            key = answer_key(claimed.batch_id, claimed.line, claimed.attempts)
            await asyncio.to_thread(self._spool.put, key, body)
            body = None
        stored = None
        try:
            stored = await self._pool.fetchval(queries.finish_batch_line, claimed.batch_id, claimed.line,
                                               self._gateway_id, claimed.attempts, status, body, code, message, key)
        finally:
            if key is not None and stored is None:  # not this attempt's answer after all: nobody reads its key
                with contextlib.suppress(BlobStoreUnavailable):
                    await asyncio.to_thread(self._spool.delete, key)

    async def _release(self, claimed: Claimed, after_seconds: float, *, same_request_id: bool = False) -> None:
        """Back to the queue, by default under a new request id: this try's row (nothing ran) must not
        hide the next's."""
        await self._pool.execute(queries.release_batch_line, claimed.batch_id, claimed.line, self._gateway_id,
                                 claimed.attempts, after_seconds, None if same_request_id else ids.request_id())

    # ---- ending --------------------------------------------------------------------------------

    async def end_one(self) -> bool:
        batch = await self._pool.fetchrow(queries.claim_batch_ending, self._gateway_id, ENDING_LEASE_SECONDS)
        if batch is None:
            return False
        batch_id, tenant_id, ending = batch["id"], batch["tenant_id"], batch["ending"]
        storage = self._files.storage
        with contextlib.suppress(TimeoutError):  # this gateway's rows of the batch, in the ledger first
            await asyncio.wait_for(self._ledger.drain(), 10.0)
        with tempfile.TemporaryDirectory(prefix="lorafleet-batch-") as folder:
            output, errors = Path(folder) / "output.jsonl", Path(folder) / "errors.jsonl"
            completed, failed, error_lines = await self._write_files(batch_id, ending, output, errors)
            expiry = batch["output_expires_seconds"]
            blobs = [(path, purpose_name, *await self._files.put_blob(path))
                     for path, purpose_name, count in ((output, "output", completed), (errors, "error", error_lines))
                     if count]
            try:
                async with self._pool.acquire() as connection, connection.transaction():
                    recorded = {}
                    for path, name, blob_key, file_id in blobs:
                        view = await self._files.record(connection, tenant_id, "batch_output",
                                                        f"{batch_id}_{name}.jsonl", path.stat().st_size, blob_key,
                                                        file_id=file_id, expires_after_seconds=expiry,
                                                        within_quota=False)
                        recorded[name] = view.id
                    ended = await connection.fetchrow(queries.end_batch, batch_id, self._gateway_id,
                                                      recorded.get("output"), recorded.get("error"), completed,
                                                      failed, ending)
                    if ended is None:
                        raise _LeaseLost(batch_id)
                    # The room held for the output goes back as its files take theirs (never less: every answer
                    # kept is within its line's bound, and the bounds are what was held).
                    await storage.refund(connection, tenant_id, ended["released_bytes"], OUTPUT_OBJECTS)
                    await connection.execute(queries.forget_batch_lines, batch_id)
            except BaseException:
                for _, _, blob_key, _ in blobs:
                    await self._files.forget_blob(blob_key)
                raise
        with contextlib.suppress(BlobStoreUnavailable):  # its files hold every answer now
            await asyncio.to_thread(self._spool.delete_batch, batch_id)
        log.info("batch_ended", batch_id=batch_id, status=ending, completed=completed, failed=failed)
        return True

    async def _write_files(self, batch_id: str, ending: str, output: Path, errors: Path) -> tuple[int, int, int]:
        """Every line once: answered 2xx into ``output``; any other answer, or none, into ``errors``. The lines
        completed, failed, and written to ``errors``."""
        completed = failed = error_lines = 0
        after = 0
        with open(output, "wb") as out, open(errors, "wb") as err:
            while True:
                rows = await self._pool.fetch(queries.batch_lines_in_order, batch_id, after, PAGE)
                for row in rows:
                    spooled = (await asyncio.to_thread(self._spool.get, row["answer_blob"])
                               if row["answer_blob"] is not None else None)
                    line = _output_line(batch_id, row, ending, spooled)
                    ok = line.response is not None and 200 <= line.response.status_code < 300
                    (out if ok else err).write(_encode(line) + b"\n")
                    completed += ok
                    error_lines += not ok
                    # A line a cancel stopped before it ran did not fail: it is in the error file (batch_cancelled)
                    # but not in request_counts.failed, as OpenAI counts a cancelled batch.
                    failed += not ok and not (ending == "cancelled" and row["state"] != "done")
                if len(rows) < PAGE:
                    return completed, failed, error_lines
                after = rows[-1]["line"]


class _Refused(Exception):
    def __init__(self, errors: list[BatchError]) -> None:
        super().__init__(f"{len(errors)} refusals")
        self.errors = errors


class _LeaseLost(Exception):
    def __init__(self, batch_id: str) -> None:
        super().__init__(f"batch {batch_id}: another gateway holds it now")


def _output_line(batch_id: str, row: asyncpg.Record, ending: str, spooled: bytes | None = None) -> OutputLine:
    """A line of the output or error file; ``spooled``: its answer's body, when it waited in the blob store."""
    line_id = ids.batch_line_output_id(batch_id, row["line"])
    if row["state"] != "done":
        code, message = UNFINISHED[ending]
        return OutputLine(id=line_id, custom_id=row["custom_id"], response=None, error=LineError(code=code, message=message))
    response = None
    if row["status_code"] is not None:
        body = spooled if spooled is not None else bytes(row["response"] or b"")
        response = LineResponse(status_code=row["status_code"], request_id=row["request_id"],
                                body=msgspec.Raw(body or b"null"))
    error = None
    if row["error_code"] is not None:
        error = LineError(code=row["error_code"], message=row["error_message"] or "")
    return OutputLine(id=line_id, custom_id=row["custom_id"], response=response, error=error)


def _error_of(answer: Answer) -> tuple[str, str]:
    """The OpenAI error envelope's code and message, for the error file's ``error``."""
    try:
        error = _error_body(answer.body).get("error") or {}
    except msgspec.DecodeError:
        error = {}
    # Bounded: with the line's custom_id, this is what an error line adds to its answer (LINE_WRAPPER).
    code = error.get("code") or error.get("type") or f"http_{answer.status}"  # the route's own words first
    return str(code)[:64], str(error.get("message") or "")[:500]


def _retry_after(answer: Answer) -> float | None:
    """Seconds until the line may try again when it did not run for a passing reason; else None."""
    if answer.status == 503:
        return 5.0
    if answer.status == 429 and _error_of(answer)[0] in RETRYABLE_429:
        return 2.0
    return None
