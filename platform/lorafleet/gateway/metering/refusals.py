"""Counts of requests refused by admission (402, 429) per tenant and day, flushed in batches.

A refused request costs no database write of its own (a flood of 429s must stay cheap): this
gateway counts in memory and adds its counts with one statement every few seconds. Counts not
yet flushed when a gateway dies are lost; they are a display figure, not money.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter

import asyncpg
import structlog
from lorafleet.core.tasks import stop_task
from lorafleet.db import is_unavailable, queries

log = structlog.get_logger("lorafleet.refusals")


class RefusalCounter:
    def __init__(self, pool: asyncpg.Pool, flush_seconds: float = 5.0) -> None:
        self._pool = pool
        self._flush_seconds = flush_seconds
        self._counts: Counter[tuple[str, dt.datetime, int]] = Counter()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="refusal-counter")

    def count(self, tenant_id: str, status: int) -> None:
        day = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        self._counts[(tenant_id, day, status)] += 1

    async def flush(self) -> None:
        if not self._counts:
            return
        counts, self._counts = self._counts, Counter()
        merged: dict[tuple[str, dt.datetime], list[int]] = {}
        for (tenant, day, status), n in counts.items():
            merged.setdefault((tenant, day), [0, 0])[0 if status == 402 else 1] += n
        keys = sorted(merged)
        try:
            await self._pool.execute(queries.add_refusals, [k[0] for k in keys], [k[1] for k in keys],
                                     [merged[k][0] for k in keys], [merged[k][1] for k in keys], timeout=10)
        except Exception as exc:  # noqa: BLE001 - counts are kept for the next try, whatever failed
            counts.update(self._counts)
            self._counts = counts
            log.warning("refusal_flush_failed", error=repr(exc)[:300], database_away=is_unavailable(exc))

    async def close(self) -> None:
        await stop_task(self._task)
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_seconds)
            await self.flush()
