"""The usage ledger's write path: one row per admitted request, batched, idempotent, durable.

Requests hand a finished :class:`UsageRow` to :meth:`LedgerWriter.record` (no await, so it also
works from cleanup code running under cancellation). A background task writes queued rows in
batches; one statement per batch inserts them with ``ON CONFLICT (request_id) DO NOTHING``,
settles their reservations and updates the rollups. When the database cannot be reached, the
batch goes to the local spool (fsynced JSON lines) and is replayed when the database returns;
:meth:`close` flushes what is left on shutdown, to the database or else to the spool.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import msgspec
import structlog

from lorafleet.core.tasks import stop_task
from lorafleet.db import DATABASE_UNAVAILABLE, queries
from lorafleet.gateway.spool import LedgerSpool

log = structlog.get_logger("lorafleet.ledger")


class UsageRow(msgspec.Struct, kw_only=True):
    request_id: str
    tenant_id: str
    api_key_id: str
    base_model_id: str
    model: str
    endpoint: str
    outcome: str
    http_status: int
    streamed: bool
    prompt_tokens: int
    completion_tokens: int
    worker_url: str | None
    started_at: dt.datetime
    finished_at: dt.datetime
    ttft_ms: int | None
    duration_ms: int
    adapter_id: str | None = None
    cost_micro_usd: int = 0
    price_id: int | None = None


_COLUMNS = list(UsageRow.__struct_fields__)
# A row the database refuses on its own merits: written alone, logged, never retried forever.
_ROW_ERRORS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)
_RETRY_SECONDS = 1.0
_STATEMENT_TIMEOUT = 30.0


class LedgerWriter:
    def __init__(self, pool: asyncpg.Pool, *, spool: LedgerSpool | None = None, batch_size: int = 5000,
                 flush_interval: float = 0.02) -> None:
        self._pool = pool
        self._spool = spool
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue: list[UsageRow] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.written = 0

    def start(self) -> None:
        if self._spool is not None and self._spool.pending():
            self._idle.clear()
            self._wakeup.set()  # rows spooled by an earlier process: replay them first
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    @property
    def queued(self) -> int:
        return len(self._queue)

    def record(self, row: UsageRow) -> None:
        self._queue.append(row)
        self._idle.clear()
        self._wakeup.set()

    async def drain(self) -> None:
        """Wait until every row recorded so far is in the database (spooled rows included)."""
        await self._idle.wait()

    async def close(self) -> None:
        await stop_task(self._task)
        while self._queue:
            try:
                await self._flush_once()
            except DATABASE_UNAVAILABLE as exc:
                self._spool_queue(exc)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await asyncio.sleep(self._flush_interval)  # let a burst gather into one batch
            try:
                while self._queue:
                    await self._flush_once()
                if self._spool is not None and self._spool.pending():
                    self.written += await self._spool.replay(self._insert_rows)
                    log.info("ledger_spool_replayed")
            except DATABASE_UNAVAILABLE as exc:
                self._spool_queue(exc)
                await asyncio.sleep(_RETRY_SECONDS)
                self._wakeup.set()  # try the spool again
                continue
            except Exception as exc:  # a deadlock, a client-state error …: the rows stay queued, retry
                log.warning("ledger_flush_retry", error=repr(exc), queued=len(self._queue))
                await asyncio.sleep(_RETRY_SECONDS / 10)
                self._wakeup.set()
                continue
            if not self._queue:
                self._idle.set()

    def _spool_queue(self, exc: BaseException) -> None:
        if not self._queue:
            return
        if self._spool is None:
            log.error("ledger_flush_failed", error=repr(exc), queued=len(self._queue))
            return
        self._spool.append(self._queue)
        log.error("ledger_spooled", error=repr(exc), rows=len(self._queue))
        self._queue.clear()

    async def _flush_once(self) -> None:
        batch = self._queue[: self._batch_size]
        await self._insert_rows(batch)
        del self._queue[: len(batch)]

    async def _insert_rows(self, batch: list[UsageRow]) -> int:
        try:
            await self._insert(batch)
        except _ROW_ERRORS:
            # One bad row must not hold the others hostage: write them one by one, log the culprit.
            for row in batch:
                try:
                    await self._insert([row])
                except _ROW_ERRORS as exc:
                    log.error("ledger_row_rejected", request_id=row.request_id, error=str(exc))
        self.written += len(batch)
        return len(batch)

    async def _insert(self, rows: list[UsageRow]) -> None:
        columns = [[getattr(row, name) for row in rows] for name in _COLUMNS]
        await self._pool.execute(queries.insert_usage_rows, *columns, timeout=_STATEMENT_TIMEOUT)
