"""The in-process tier: the real gateway app in this test process, in front of stub workers, on a real PostgreSQL.

No engine and no subprocess: the app runs under uvicorn on a loopback port in the test's own event
loop (so real HTTP clients, the openai SDK included, talk to it over a socket), and the workers
are :mod:`lorafleet.devtools.stub_worker` apps whose behaviour a test can change (fail, drop,
cut a stream) and whose received bodies it can read. The whole tier runs in seconds.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvicorn
from aiohttp import web
from lorafleet.app import create_app
from lorafleet.core import ids
from lorafleet.core.ids import random_token
from lorafleet.core.settings import GatewaySettings, load_settings
from lorafleet.db import create_pool, queries
from lorafleet.db.migrate import migrate
from lorafleet.devtools.database import DatabaseFactory
from lorafleet.devtools.stub_worker import StubBehaviour, build_app
from lorafleet.tenancy import TenancyService

from tests.helpers import TenantKey

STUB_MODEL = "stub-model"
IDLE_TIMEOUT_SECONDS = 1.5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class StubWorker:
    url: str
    behaviour: StubBehaviour
    runner: web.AppRunner


@dataclass
class InProcessPlatform:
    url: str
    internal_token: str
    admin_token: str
    base_model_id: str
    workers: list[StubWorker] = field(default_factory=list)
    app: Any = None

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def env(self) -> dict[str, str]:
        return {"LORAFLEET_ADMIN_TOKEN": self.admin_token}

    def reset(self) -> None:
        for worker in self.workers:
            worker.behaviour.fail_next = worker.behaviour.drop_next = 0
            worker.behaviour.fail_status = 500
            worker.behaviour.cut_after_chunks = None
            worker.behaviour.delay_seconds = worker.behaviour.state_delay_seconds = 0.0
            worker.behaviour.aborted = 0
            worker.behaviour.cached_tokens = None
            worker.behaviour.received.clear()
        if self.app is not None:  # what one test's failures taught the gateway is not the next test's
            for state in self.app.state.services.registry.workers():
                state.failures, state.quarantined_until = 0, 0.0


async def _start_stub(token: str) -> StubWorker:
    behaviour = StubBehaviour(token=token)
    runner = web.AppRunner(build_app(STUB_MODEL, behaviour=behaviour), access_log=None)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return StubWorker(f"http://127.0.0.1:{port}", behaviour, runner)


@pytest.fixture(scope="session")
async def inprocess_database_url(databases: DatabaseFactory) -> str:
    """A database of the tier's own: its stub workers never show up in the engine tier's registry."""
    dsn = await databases.create("lorafleet_inprocess")
    await migrate(dsn)
    return dsn


@pytest.fixture(scope="session")
async def db(inprocess_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """This tier's database (overrides the session's ``db`` for the tests in this folder)."""
    pool = await create_pool(inprocess_database_url, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def inprocess(inprocess_database_url: str, db: asyncpg.Pool, tmp_path_factory: pytest.TempPathFactory
                    ) -> AsyncIterator[InProcessPlatform]:
    """Two stub workers for one base model and the gateway app in front of them."""
    database_url = inprocess_database_url
    internal_token, admin_token = random_token(32), random_token(32)
    base = await db.fetchrow(queries.upsert_base_model, ids.base_model_id(), STUB_MODEL, 4096, {}, 16, "generate")
    workers = [await _start_stub(internal_token), await _start_stub(internal_token)]
    for worker in workers:
        await db.execute(queries.upsert_worker, worker.url, base["id"], "ready")

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(2)
            for worker in workers:
                await db.execute(queries.heartbeat_worker, worker.url)

    beating = asyncio.create_task(heartbeat())
    data_dir: Path = tmp_path_factory.mktemp("inprocess")
    settings = load_settings(GatewaySettings, {
        "LORAFLEET_DATABASE_URL": database_url, "LORAFLEET_INTERNAL_TOKEN": internal_token,
        "LORAFLEET_ADMIN_TOKEN": admin_token, "LORAFLEET_DATA_DIR": str(data_dir),
        "LORAFLEET_WORKER_REFRESH_SECONDS": "0.2", "LORAFLEET_CATALOG_REFRESH_SECONDS": "0.2",
        "LORAFLEET_AUTH_FAILURES_PER_MINUTE": "0",
        "LORAFLEET_BATCH_MIN_DELAY_SECONDS": "0",  # batch tests run their lines at once (one holds the default)
        # Webhook tests receive at 127.0.0.1 (a test with its own gateway checks the refusal without this) and
        # see retries within seconds.
        "LORAFLEET_WEBHOOK_ALLOW_PRIVATE": "true", "LORAFLEET_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
        "LORAFLEET_WEBHOOK_POLL_SECONDS": "0.1", "LORAFLEET_WEBHOOK_TIMEOUT_SECONDS": "3",
        # Short enough for the relay's tests to wait out (a stream silent this long is cut), longer than
        # any other test's stub delay.
        "LORAFLEET_UPSTREAM_IDLE_TIMEOUT_SECONDS": str(IDLE_TIMEOUT_SECONDS),
    })
    port = _free_port()
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="on"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.02)
    platform = InProcessPlatform(f"http://127.0.0.1:{port}", internal_token, admin_token, base["id"], workers, app)
    try:
        yield platform
    finally:
        server.should_exit = True
        await serving
        beating.cancel()
        for worker in workers:
            await worker.runner.cleanup()
            await db.execute(queries.delete_worker, worker.url)


@pytest.fixture
async def platform(inprocess: InProcessPlatform) -> InProcessPlatform:
    """The in-process platform with its stub workers behaving normally again."""
    inprocess.reset()
    return inprocess


@pytest.fixture
async def spare_stub(inprocess: InProcessPlatform) -> AsyncIterator[StubWorker]:
    """One more stub worker, started but not registered: a test decides what becomes of it."""
    worker = await _start_stub(inprocess.internal_token)
    try:
        yield worker
    finally:
        await worker.runner.cleanup()


async def _fresh_tenant(db: asyncpg.Pool, prefix: str) -> TenantKey:
    service = TenancyService(db)
    created = await service.create_tenant(f"{prefix}-{random_token(6)}")
    key = await service.create_key(created.id)
    return TenantKey(created.id, key.id, key.secret)


@pytest.fixture
async def tenant(db: asyncpg.Pool) -> TenantKey:
    """A fresh tenant with one all-scope key, for this test alone."""
    return await _fresh_tenant(db, "tenant")


@pytest.fixture
async def other_tenant(db: asyncpg.Pool) -> TenantKey:
    """A second fresh tenant, for tests of what one tenant must never see of another's."""
    return await _fresh_tenant(db, "other")


@dataclass
class ExtraGateway:
    url: str
    app: Any

    @property
    def services(self) -> Any:
        return self.app.state.services


@pytest.fixture
async def start_gateway(inprocess: InProcessPlatform, inprocess_database_url: str, tmp_path: Path):
    """Start another gateway on this tier's database with settings of the test's own (``LORAFLEET_``-less
    names: ``start_gateway(WAKE_TIMEOUT_SECONDS="5")``); stopped after the test."""
    running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(**overrides: str) -> ExtraGateway:
        environ = {
            "LORAFLEET_DATABASE_URL": inprocess_database_url, "LORAFLEET_INTERNAL_TOKEN": inprocess.internal_token,
            "LORAFLEET_ADMIN_TOKEN": inprocess.admin_token, "LORAFLEET_DATA_DIR": str(tmp_path / f"gateway{len(running)}"),
            "LORAFLEET_WORKER_REFRESH_SECONDS": "0.2", "LORAFLEET_CATALOG_REFRESH_SECONDS": "0.2",
            "LORAFLEET_AUTH_FAILURES_PER_MINUTE": "0", "LORAFLEET_BATCH_MIN_DELAY_SECONDS": "0",
        }
        environ.update({f"LORAFLEET_{name}": value for name, value in overrides.items()})
        settings = load_settings(GatewaySettings, environ)
        app = create_app(settings)
        port = _free_port()
        # As `lorafleet gateway` runs it: X-Forwarded-For is believed from the trusted proxies only.
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                               access_log=False, lifespan="on", proxy_headers=True,
                                               forwarded_allow_ips=settings.forwarded_allow_ips))
        serving = asyncio.create_task(server.serve())
        running.append((server, serving))
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.02)
        return ExtraGateway(f"http://127.0.0.1:{port}", app)

    yield start
    for server, _ in running:
        server.should_exit = True
    for _, serving in running:
        await serving


@dataclass
class SleepingModel:
    """A base model of its own whose only worker (a stub) is registered asleep."""

    name: str
    id: str
    worker: StubWorker

    async def wake(self, db: asyncpg.Pool) -> None:
        await db.execute(queries.upsert_worker, self.worker.url, self.id, "ready")  # NOTIFYs the gateways


@pytest.fixture
async def sleeping_model(inprocess: InProcessPlatform, db: asyncpg.Pool) -> AsyncIterator[SleepingModel]:
    name = f"sleepy-{random_token(8).lower()}"
    base = await db.fetchrow(queries.upsert_base_model, ids.base_model_id(), name, 4096, {}, 16, "generate")
    behaviour = StubBehaviour(token=inprocess.internal_token)
    runner = web.AppRunner(build_app(name, behaviour=behaviour), access_log=None)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    worker = StubWorker(f"http://127.0.0.1:{port}", behaviour, runner)
    await db.execute(queries.upsert_worker, worker.url, base["id"], "asleep")

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(2)
            await db.execute(queries.heartbeat_worker, worker.url)

    beating = asyncio.create_task(heartbeat())
    try:
        yield SleepingModel(name, base["id"], worker)
    finally:
        beating.cancel()
        await db.execute(queries.delete_worker, worker.url)
        await runner.cleanup()


VOCAB_SIZE = 1000


@pytest.fixture(scope="session")
async def vocab_model(inprocess: InProcessPlatform, db: asyncpg.Pool) -> str:
    """A base model whose workers said their vocabulary (1,000 tokens) and hidden size; no worker runs it:
    what the gateway refuses of it is refused before any worker is chosen. Its context is the stub model's."""
    name = f"vocab-{random_token(8).lower()}"
    architecture = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 4,
                    "head_dim": 16, "num_hidden_layers": 2, "vocab_size": VOCAB_SIZE}
    await db.fetchrow(queries.upsert_base_model, ids.base_model_id(), name, 4096, architecture, 16, "generate")
    catalog = inprocess.app.state.services.catalog
    while name not in {model.name for model in catalog.all()}:
        await asyncio.sleep(0.05)
    return name
