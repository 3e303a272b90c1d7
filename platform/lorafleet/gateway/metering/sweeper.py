"""The reservation sweeper: this gateway's heartbeat, and the sweep that frees what dead gateways reserved.

Every gateway runs both: the heartbeat proves its reservations are still backed by a live
process; the sweeper (idempotent, so every replica may run it) deletes reservations of gateways
silent for ``dead_after`` seconds and hands the money back to the tenants' accounts.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog
from lorafleet.core.tasks import stop_task
from lorafleet.db import DATABASE_UNAVAILABLE, is_unavailable, queries

log = structlog.get_logger("lorafleet.sweeper")


class ReservationSweeper:
    def __init__(self, pool: asyncpg.Pool, gateway_id: str, *, heartbeat_seconds: float, dead_after_seconds: float,
                 reservation_max_seconds: float) -> None:
        self._pool = pool
        self.gateway_id = gateway_id
        self._interval = heartbeat_seconds
        self._dead_after = dead_after_seconds
        self._max_age = reservation_max_seconds
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._pool.execute(queries.register_gateway, self.gateway_id)
        self._task = asyncio.create_task(self._run(), name="reservation-sweeper")

    async def close(self) -> None:
        await stop_task(self._task)
        try:
            await self._pool.execute(queries.deregister_gateway, self.gateway_id, timeout=5)
        except (*DATABASE_UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.warning("gateway_deregister_failed", error=repr(exc))

    async def sweep(self) -> int:
        released = await self._pool.fetchval(queries.sweep_reservations, self._dead_after, self._max_age)
        if released:
            log.warning("reservations_released", requests=released, reason="gateway_dead_or_request_too_old")
        await self._pool.execute(queries.forget_dead_gateways, self._dead_after * 10)
        return released

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._pool.execute(queries.heartbeat_gateway, self.gateway_id)
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 - the loop outlives any failure; the next beat retries
                log.warning("gateway_heartbeat_failed", error=repr(exc)[:300], database_away=is_unavailable(exc))
