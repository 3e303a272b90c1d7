"""A worker applies pending migrations at start when its database role may, and starts anyway when the
operator gave it the limited role SECURITY.md recommends (the migration Job applies them then)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg
from lorafleet.core.ids import random_token
from lorafleet.worker.supervisor import apply_migrations


async def test_a_worker_migrates_a_fresh_database_and_a_limited_role_leaves_it_to_the_operator(databases):
    dsn = await databases.create("lorafleet_worker_migrations")
    assert await apply_migrations(dsn) is True
    admin = await asyncpg.connect(dsn)
    role = f"lf_worker_{random_token(8).lower()}"
    try:
        assert await admin.fetchval("SELECT count(*) FROM schema_migrations") > 0
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        parts = urlsplit(dsn)
        limited = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        assert await apply_migrations(limited) is False
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
