"""The platform remembers the database `lorafleet up` was given, and never silently changes it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import asyncpg
from lorafleet.cli.up import start_database
from lorafleet.core.settings import LauncherSettings, load_settings


def _cli(data_dir, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env.update(LORAFLEET_DATA_DIR=str(data_dir), **extra_env)
    return subprocess.run([sys.executable, "-m", "lorafleet.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=120)


async def _tenant_name(dsn: str, tenant_id: str) -> str | None:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval("SELECT name FROM tenants WHERE id = $1", tenant_id)
    finally:
        await connection.close()


def test_an_external_database_is_kept_for_every_later_command(database_url, tmp_path):
    data_dir = tmp_path / "data"
    # What `lorafleet up` does first, given LORAFLEET_DATABASE_URL.
    assert start_database(load_settings(LauncherSettings, {"LORAFLEET_DATA_DIR": str(data_dir),
                                         "LORAFLEET_DATABASE_URL": database_url})) == database_url

    # A later CLI command, without the variable, works on that database.
    created = _cli(data_dir, "tenants", "create", "remembered", "--json")
    assert created.returncode == 0, created.stderr
    tenant_id = json.loads(created.stdout)["id"]
    assert asyncio.run(_tenant_name(database_url, tenant_id)) == "remembered"

    # A later `up` without the variable keeps it: no embedded server is started.
    assert start_database(load_settings(LauncherSettings, {"LORAFLEET_DATA_DIR": str(data_dir)})) == database_url
    assert not (data_dir / "pgdata").exists()

    # Another URL is refused before anything starts, with what to do instead.
    other = "postgresql://postgres:hunter2@127.0.0.1:5432/some_other_database"
    refused = _cli(data_dir, "up", LORAFLEET_DATABASE_URL=other)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "--switch-database" in refused.stderr and "SWITCH_DATABASE=1" in refused.stderr
    assert "hunter2" not in refused.stderr
    assert not list(data_dir.glob("*.pid")) and not (data_dir / "pgdata").exists()
    still = _cli(data_dir, "tenants", "create", "still-there", "--json")
    assert still.returncode == 0 and asyncio.run(_tenant_name(database_url, json.loads(still.stdout)["id"]))
