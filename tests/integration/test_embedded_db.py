"""The embedded PostgreSQL that `lorafleet up` starts when no database URL is set, and `down` stops."""

import asyncpg
import psutil
from lorafleet.db.embedded import start_embedded, stop_embedded


async def test_start_connect_stop(tmp_path):
    pgdata = tmp_path / "pgdata"
    dsn = start_embedded(pgdata)
    connection = await asyncpg.connect(dsn)
    assert await connection.fetchval("SELECT 1") == 1
    await connection.close()
    pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    assert stop_embedded(pgdata) is True
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert stop_embedded(pgdata) is False  # nothing left to stop
