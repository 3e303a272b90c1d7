"""asyncpg pool with the codecs the code relies on."""

from __future__ import annotations

import asyncpg
import msgspec

# The database is away (stopped, restarting, unreachable), as opposed to refusing a statement.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError, asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InternalClientError,  # a connection left mid-operation by a server that went away
)


def is_unavailable(exc: BaseException) -> bool:
    """The one database-error classifier of background loops: is the database away (retry later, spool),
    rather than refusing this statement (the statement or its data is at fault)?"""
    return isinstance(exc, DATABASE_UNAVAILABLE)


def _encode_json(value: object) -> str:
    return msgspec.json.encode(value).decode()


async def init_connection(connection: asyncpg.Connection) -> None:
    """jsonb in and out as Python values (text format: the binary one needs a version byte)."""
    await connection.set_type_codec(
        "jsonb", encoder=_encode_json, decoder=msgspec.json.decode, schema="pg_catalog", format="text",
    )


async def keep_session(connection: asyncpg.Connection) -> None:
    """Release a connection to the pool as it is.

    asyncpg's default reset sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on
    every release — a second round trip inside every ``pool.fetch*``, before the result reaches the
    caller. Nothing here leaves session state behind: settings are ``SET LOCAL`` or
    ``set_config(..., true)``, the migrator's advisory lock is on its own connection, nothing listens,
    and cursors live in transactions. An open transaction is still rolled back by asyncpg itself.
    """


async def create_pool(dsn: str, *, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, init=init_connection, reset=keep_session)
