"""asyncpg pool with the codecs the code relies on."""

from __future__ import annotations

import asyncpg
import msgspec


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", encoder=msgspec.json.encode, decoder=msgspec.json.decode, schema="pg_catalog", format="binary",
    )


async def create_pool(dsn: str, *, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, init=_init_connection)
