"""The usage ledger's write path: one row per admitted request, batched, idempotent.

Requests hand a finished :class:`UsageRow` to :meth:`LedgerWriter.record` (no await, so it also
works from cleanup code running under cancellation). A background task writes queued rows in
batches with ``ON CONFLICT (request_id) DO NOTHING``; a failed batch stays queued and is retried,
and :meth:`close` flushes what is left on shutdown.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import msgspec
import structlog

from lorafleet.db import queries

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


_COLUMNS = [field for field in UsageRow.__struct_fields__]


class LedgerWriter:
    def __init__(self, pool: asyncpg.Pool, *, batch_size: int = 1000, flush_interval: float = 0.02) -> None:
        self._pool = pool
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue: list[UsageRow] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    @property
    def queued(self) -> int:
        return len(self._queue)

    def record(self, row: UsageRow) -> None:
        self._queue.append(row)
        self._idle.clear()
        self._wakeup.set()

    async def drain(self) -> None:
        """Wait until every row recorded so far is in the database."""
        await self._idle.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue:
            await self._flush_once()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await asyncio.sleep(self._flush_interval)  # let a burst gather into one batch
            while self._queue:
                try:
                    await self._flush_once()
                except (OSError, asyncpg.PostgresError) as exc:
                    log.error("ledger_flush_failed", error=str(exc), queued=len(self._queue))
                    await asyncio.sleep(1.0)
            if not self._queue:
                self._idle.set()

    async def _flush_once(self) -> None:
        batch = self._queue[: self._batch_size]
        try:
            await self._insert(batch)
        except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError):
            # One bad row must not hold the others hostage: write them one by one, log the culprit.
            for row in batch:
                try:
                    await self._insert([row])
                except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                    log.error("ledger_row_rejected", request_id=row.request_id, error=str(exc))
        del self._queue[: len(batch)]

    async def _insert(self, rows: list[UsageRow]) -> None:
        columns = [[getattr(row, name) for row in rows] for name in _COLUMNS]
        await self._pool.execute(queries.insert_usage_rows, *columns)
