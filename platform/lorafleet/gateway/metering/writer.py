"""The usage ledger's write path: one row per admitted request, batched, idempotent, durable.

Requests hand a finished :class:`LedgerRow` to :meth:`LedgerWriter.record` (no await, so it also
works from cleanup code running under cancellation). A background task writes queued rows in
batches; one statement per batch inserts them with ``ON CONFLICT (request_id) DO NOTHING``,
settles their reservations and updates the rollups.

Nothing is retried forever and nothing is dropped:

- the database is away (:func:`~lorafleet.db.is_unavailable`): the batch goes to the local spool
  (fsynced JSON lines) and is replayed when it returns;
- the database refuses the batch for another reason: it is tried again a few times
  (:data:`ATTEMPTS`), then row by row; a row refused on its own merits goes to the spool's
  dead-letter file, logged, for an operator to look at — the others are written;
- :meth:`close` (shutdown) writes what is left, and spools it on any error.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog
from lorafleet.billing.ledger_row import LedgerRow, column_arrays
from lorafleet.core.tasks import stop_task
from lorafleet.db import is_unavailable, queries
from lorafleet.gateway.metering.spool import LedgerSpool

log = structlog.get_logger("lorafleet.ledger")

ATTEMPTS = 3
_RETRY_SECONDS = 1.0
_STATEMENT_TIMEOUT = 30.0


class LedgerWriter:
    def __init__(self, pool: asyncpg.Pool, *, spool: LedgerSpool | None = None, batch_size: int = 5000,
                 flush_interval: float = 0.02) -> None:
        self._pool = pool
        self._spool = spool
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue: list[LedgerRow] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        if self._spool is not None and self._spool.pending():
            self._idle.clear()
            self._wakeup.set()  # rows spooled by an earlier process: replay them first
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    @property
    def queued(self) -> int:
        return len(self._queue)

    def record(self, row: LedgerRow) -> None:
        self._queue.append(row)
        self._idle.clear()
        self._wakeup.set()

    async def drain(self) -> None:
        """Wait until every row recorded so far is in the database (spooled rows included)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Write what is queued; whatever cannot be written now is spooled, never lost."""
        await stop_task(self._task)
        try:
            while self._queue:
                await self._flush_once()
        except Exception as exc:  # noqa: BLE001 - on the way out, any failure means: keep the rows on disk
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
                    await self._spool.replay(self._insert_rows)
                    log.info("ledger_spool_replayed")
            except Exception as exc:  # noqa: BLE001 - the writer must survive anything
                if is_unavailable(exc):
                    self._spool_queue(exc)
                else:
                    log.error("ledger_flush_failed", error=repr(exc)[:500], queued=len(self._queue))
                await asyncio.sleep(_RETRY_SECONDS)
                self._wakeup.set()  # try the spool (or the queue) again
                continue
            if not self._queue:
                self._idle.set()

    def _spool_queue(self, exc: BaseException) -> None:
        if not self._queue:
            return
        if self._spool is None:
            log.error("ledger_flush_failed", error=repr(exc)[:500], queued=len(self._queue))
            return
        rows = list(self._queue)
        self._spool.append(rows)
        log.error("ledger_spooled", error=repr(exc)[:500], rows=len(rows))
        self._queue.clear()

    async def _flush_once(self) -> None:
        batch = self._queue[: self._batch_size]
        await self._insert_rows(batch)
        del self._queue[: len(batch)]

    async def _insert_rows(self, batch: list[LedgerRow]) -> int:
        """Insert a batch; a batch the database keeps refusing is written row by row, bad rows set aside."""
        for attempt in range(ATTEMPTS):
            try:
                await self._insert(batch)
                break
            except Exception as exc:  # noqa: BLE001
                if is_unavailable(exc):
                    raise  # the caller spools: the database is away, not the batch at fault
                log.warning("ledger_batch_refused", error=repr(exc)[:500], rows=len(batch), attempt=attempt + 1)
                if attempt + 1 < ATTEMPTS:
                    await asyncio.sleep(_RETRY_SECONDS / 10)
        else:
            await self._insert_one_by_one(batch)
        return len(batch)

    async def _insert_one_by_one(self, batch: list[LedgerRow]) -> None:
        rejected = []
        for row in batch:
            try:
                await self._insert([row])
            except Exception as exc:  # noqa: BLE001
                if is_unavailable(exc):
                    raise
                log.error("ledger_row_rejected", request_id=row.request_id, error=repr(exc)[:500])
                rejected.append(row)
        if rejected and self._spool is not None:
            self._spool.reject(rejected)

    async def _insert(self, rows: list[LedgerRow]) -> None:
        await self._pool.execute(queries.insert_usage_rows, *column_arrays(rows), timeout=_STATEMENT_TIMEOUT)
