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
        for _name, sql in queries.items():
            # Preparing makes PostgreSQL resolve every table, column and parameter type.
            await connection.prepare(sql)
        tables = {r["tablename"] for r in await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"tenants", "api_keys", "base_models", "workers", "usage_ledger", "schema_migrations"} <= tables
        money_like = await connection.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND (column_name LIKE '%tokens%' OR column_name LIKE '%micro%' OR column_name LIKE '%pico%')"
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


async def test_exact_costs_are_backfilled_from_the_rounded_ones(databases, tmp_path: Path):
    """0012 gives every row written before it its exact amount: the whole micro-USD it was billed, × 10⁶."""
    dsn = await databases.create()
    for migration in discover():
        if migration.version < "0012":
            (tmp_path / migration.path.name).write_bytes(migration.path.read_bytes())
    await migrate(dsn, tmp_path)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("INSERT INTO tenants (id, name) VALUES ('ten_m', 'm')")
        await connection.execute("INSERT INTO tenant_accounts (tenant_id, spent_total_micro_usd, period_spent_micro_usd) "
                                 "VALUES ('ten_m', 57, 12)")
        for request_id, cost in (("req_a", 0), ("req_b", 45), ("req_c", 12)):
            await connection.execute(
                "INSERT INTO usage_ledger (request_id, tenant_id, api_key_id, base_model_id, model, endpoint, outcome, "
                "http_status, streamed, prompt_tokens, completion_tokens, started_at, finished_at, duration_ms, "
                "cost_micro_usd) VALUES ($1, 'ten_m', 'key_m', 'bm_m', 'm', 'completions', 'success', 200, false, "
                "1, 1, now(), now(), 1, $2)", request_id, cost)
        await connection.execute("INSERT INTO usage_daily (tenant_id, bucket, api_key_id, base_model_id, adapter_id, "
                                 "requests, errors, prompt_tokens, completion_tokens, cost_micro_usd) "
                                 "VALUES ('ten_m', date_trunc('day', now()), 'key_m', 'bm_m', NULL, 3, 0, 3, 3, 57)")
        for migration in discover():
            (tmp_path / migration.path.name).write_bytes(migration.path.read_bytes())
        assert "0012" in await migrate(dsn, tmp_path)
        rows = await connection.fetch("SELECT request_id, cost_pico_usd FROM usage_ledger ORDER BY request_id")
        assert [(r["request_id"], r["cost_pico_usd"]) for r in rows] == \
            [("req_a", 0), ("req_b", 45_000_000), ("req_c", 12_000_000)]
        assert await connection.fetchval("SELECT cost_pico_usd FROM usage_daily") == 57_000_000
        account = await connection.fetchrow("SELECT * FROM tenant_accounts WHERE tenant_id = 'ten_m'")
        assert (account["spent_total_pico_usd"], account["period_spent_pico_usd"]) == (57_000_000, 12_000_000)
        assert (account["spent_total_micro_usd"], account["period_spent_micro_usd"]) == (57, 12)
        assert account["exact_period_start"] == account["period_start"]
    finally:
        await connection.close()


async def test_teams_migrations_give_what_exists_a_default_project_and_its_administrators_the_new_scopes(
        databases, tmp_path: Path):
    """0023 and 0024 on a database with data: each tenant gets a default project that owns its keys and
    objects; keys that could manage keys gain audit_logs:read, webhooks:* and organization:admin; others not."""
    dsn = await databases.create()
    for migration in discover():
        if migration.version < "0023":
            (tmp_path / migration.path.name).write_bytes(migration.path.read_bytes())
    await migrate(dsn, tmp_path)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("INSERT INTO tenants (id, name) VALUES ('ten_t', 't')")
        for key_id, scopes in (("key_admin", ["inference", "keys:write"]), ("key_plain", ["inference"])):
            await connection.execute(
                "INSERT INTO api_keys (id, tenant_id, key_hash, display_prefix, mode, scopes) "
                "VALUES ($1, 'ten_t', $2, 'sk_live_x', 'live', $3)", key_id, key_id.encode().ljust(32, b"0"), scopes)
        await connection.execute("INSERT INTO files (id, tenant_id, purpose, filename, bytes, blob_key) "
                                 "VALUES ('file-t', 'ten_t', 'fine-tune', 't.jsonl', 1, $1)", "0" * 64)
        for migration in discover():
            if migration.version <= "0024":
                (tmp_path / migration.path.name).write_bytes(migration.path.read_bytes())
        assert await migrate(dsn, tmp_path) == ["0023", "0024"]
        default = await connection.fetchval("SELECT id FROM projects WHERE tenant_id = 'ten_t' AND is_default")
        assert default is not None
        assert {r["project_id"] for r in await connection.fetch("SELECT project_id FROM api_keys")} == {default}
        assert await connection.fetchval("SELECT project_id FROM files WHERE id = 'file-t'") == default
        scopes = {r["id"]: set(r["scopes"]) for r in await connection.fetch("SELECT id, scopes FROM api_keys")}
        assert scopes["key_admin"] == {"inference", "keys:write", "audit_logs:read", "webhooks:read",
                                       "webhooks:write", "organization:admin"}
        assert scopes["key_plain"] == {"inference"}
        await connection.execute("INSERT INTO tenants (id, name) VALUES ('ten_new', 'new')")
        assert await connection.fetchval("SELECT count(*) FROM projects WHERE tenant_id = 'ten_new' AND is_default") == 1
    finally:
        await connection.close()
