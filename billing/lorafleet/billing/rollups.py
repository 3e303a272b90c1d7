"""Rebuild the hourly and daily rollups and the accounts' settled spend from the ledger.

The tables are locked for the duration, so ledger batches arriving meanwhile wait and then add
to the rebuilt numbers: none is counted twice or lost.
"""

from __future__ import annotations

import asyncpg
from lorafleet.db import queries


async def rebuild_rollups(pool: asyncpg.Pool) -> dict[str, int]:
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(queries.rebuild_rollups_lock)
        await connection.execute(queries.clear_rollups_hourly)
        await connection.execute(queries.clear_rollups_daily)
        hourly = await connection.execute(queries.rebuild_rollups_hourly)
        daily = await connection.execute(queries.rebuild_rollups_daily)
        await connection.execute(queries.rebuild_account_spend)
    return {"hourly_rows": int(hourly.split()[-1]), "daily_rows": int(daily.split()[-1])}
