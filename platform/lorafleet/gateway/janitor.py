"""Deletes what has outlived its retention, every few minutes: kept idempotent results, expired stored
responses, expired files (files/janitor.py: blob, row and quota too). Any gateway may run it (each
sweep is idempotent)."""

from __future__ import annotations

import asyncio

import asyncpg
import structlog
from lorafleet.core.tasks import stop_task
from lorafleet.db import DATABASE_UNAVAILABLE, queries
from lorafleet.files.janitor import ExpiredFiles
from lorafleet.gateway.idempotency import RETENTION_HOURS

log = structlog.get_logger("lorafleet.janitor")


class RetentionJanitor:
    def __init__(self, pool: asyncpg.Pool, interval_seconds: float = 600.0, *,
                 expired_files: ExpiredFiles | None = None) -> None:
        self._pool = pool
        self._expired_files = expired_files
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None
        self._sweeps: list[tuple[str, str, tuple[object, ...]]] = [
            ("idempotency_keys", queries.forget_idempotency_keys, (RETENTION_HOURS,)),
            ("responses", queries.forget_expired_responses, ()),
        ]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="retention-janitor")

    async def close(self) -> None:
        await stop_task(self._task)

    async def sweep(self) -> None:
        for name, query, args in self._sweeps:
            try:
                await self._pool.execute(query, *args)
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as exc:
                # The next round retries; the rows only wait longer (reads filter on expires_at meanwhile).
                log.warning("retention_sweep_failed", table=name, error=type(exc).__name__)
        if self._expired_files is not None:
            try:
                await self._expired_files.sweep()
            except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as exc:
                log.warning("retention_sweep_failed", table="files", error=type(exc).__name__)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.sweep()
