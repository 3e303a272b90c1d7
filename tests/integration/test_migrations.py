"""A database built from the migrations matches what the code expects."""

import asyncio
from pathlib import Path

import asyncpg
import pytest
from lorafleet.db import queries
from lorafleet.db.migrate import MigrationError, discover, migrate


async def test_every_named_query_prepares_against_the_migrated_schema(databases):
    dsn = await databases.create()
    assert await migrate(dsn) == [m.version for m in discover()]
    connection = await asyncpg.connect(dsn)
    try:
        for name, sql in queries.items():
            # Preparing makes PostgreSQL resolve every table, column and parameter type.
            await connection.prepare(sql)
        tables = {r["tablename"] for r in await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"tenants", "api_keys", "base_models", "workers", "usage_ledger", "schema_migrations"} <= tables
        money_like = await connection.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND (column_name LIKE '%tokens%' OR column_name LIKE '%micro%')"
        )
        assert money_like and all(r["data_type"] in ("bigint", "integer", "numeric") for r in money_like)
    finally:
        await connection.close()


async def test_concurrent_migrations_do_not_race(databases):
    dsn = await databases.create()
    results = await asyncio.gather(*(migrate(dsn) for _ in range(4)))
    applied = [version for result in results for version in result]
    assert sorted(applied) == sorted(m.version for m in discover()), "each migration applied exactly once"
    assert await migrate(dsn) == []


async def test_an_edited_applied_migration_is_refused(databases, tmp_path: Path):
    dsn = await databases.create()
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (id int);")
    assert await migrate(dsn, tmp_path) == ["0001"]
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (id bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(dsn, tmp_path)


async def test_a_failing_migration_leaves_nothing_behind(databases, tmp_path: Path):
    dsn = await databases.create()
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int); SELECT no_such_function();")
    with pytest.raises(asyncpg.PostgresError):
        await migrate(dsn, tmp_path)
    connection = await asyncpg.connect(dsn)
    try:
        assert await connection.fetchval("SELECT to_regclass('half')") is None
        assert await connection.fetchval("SELECT count(*) FROM schema_migrations") == 1
    finally:
        await connection.close()
