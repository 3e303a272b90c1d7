"""Ordered plain-SQL migrations, each in its own transaction, recorded and guarded by an advisory lock.

Two gateways starting at once both call :func:`migrate`: the second waits on the lock, then finds
nothing left to apply. An applied file whose text changed afterwards is an error, not a silent skip.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from lorafleet.db.queries import queries

# Arbitrary but fixed: the lock id every LoraFleet process agrees on for schema changes.
MIGRATION_LOCK_ID = 7_363_020_241


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


class MigrationError(RuntimeError):
    pass


def migrations_dir() -> Path:
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "migrations", here.parents[1] / "_migrations"):
        if candidate.is_dir():
            return candidate
    raise MigrationError("migrations folder not found (neither the repository's nor the installed copy)")


def discover(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found = [Migration(path.stem.split("_", 1)[0], path) for path in sorted(directory.glob("*.sql"))]
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return found


async def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations; returns the versions applied by this call."""
    pending = discover(directory)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(queries.lock_migrations, MIGRATION_LOCK_ID)
        try:
            await connection.execute(queries.create_migrations_table)
            applied = {row["version"]: row for row in await connection.fetch(queries.applied_migrations)}
            done: list[str] = []
            for migration in pending:
                if migration.version in applied:
                    if applied[migration.version]["checksum"] != migration.checksum:
                        raise MigrationError(f"migration {migration.path.name} changed after it was applied")
                    continue
                async with connection.transaction():
                    await connection.execute(migration.sql)
                    await connection.execute(
                        queries.record_migration, migration.version, migration.path.name, migration.checksum,
                    )
                done.append(migration.version)
            return done
        finally:
            await connection.execute(queries.unlock_migrations, MIGRATION_LOCK_ID)
    finally:
        await connection.close()
