"""Real processes: `lorafleet worker` (vLLM with SmolLM2) and `lorafleet gateway`, shared per session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import openai
import pytest
from lorafleet.core.ids import random_token
from lorafleet.devtools.services import (
    Service,
    platform_env,
    start_gateway,
    start_service,
    start_worker,
)
from lorafleet.tenancy import TenancyService

from tests.helpers import TenantKey


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def base_env(database_url: str, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = platform_env(database_url, model_path, tmp_path_factory.mktemp("data"))
    # Batch lines run only on the gateways a batch test starts for them (tests/integration/test_batches.py).
    env["LORAFLEET_BATCH_DISPATCH"] = "false"
    env["LORAFLEET_BATCH_MIN_DELAY_SECONDS"] = "0"  # no deferral: the tests wait for their batches' lines
    return env


@pytest.fixture(scope="session")
def worker(base_env: dict[str, str], log_dir: Path) -> Iterator[Service]:
    service = start_worker(base_env, log_dir)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def tiny_model_path(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_llama import TINY_NAME, build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / TINY_NAME, model_path)


TINY_ADAPTER_CACHE_BYTES = 1_000_000  # ~15 tiny adapters: the 200-adapter test must evict


@pytest.fixture(scope="session")
def tiny_worker(base_env: dict[str, str], log_dir: Path, tiny_model_path: Path, worker: Service) -> Iterator[Service]:
    """A second worker serving a tiny random Llama in float32, for reference-equality tests."""
    from tests.tiny_llama import TINY_NAME

    env = dict(base_env, LORAFLEET_MODEL_NAME=TINY_NAME, LORAFLEET_MODEL_PATH=str(tiny_model_path),
               LORAFLEET_ENGINE_EXTRA_ARGS="--dtype float32", LORAFLEET_ADAPTER_CACHE_BYTES=str(TINY_ADAPTER_CACHE_BYTES))
    service = start_worker(env, log_dir)
    try:
        yield service
    finally:
        service.stop()


class GatewayFactory:
    def __init__(self, base_env: dict[str, str], log_dir: Path) -> None:
        self.base_env = base_env
        self.log_dir = log_dir
        self.started: list[Service] = []

    def start(self, ready_path: str = "/readyz?workers=1", **overrides: str) -> Service:
        service = start_gateway(dict(self.base_env, **overrides), self.log_dir, ready_path)
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        for service in self.started:
            service.stop()


@pytest.fixture(scope="session")
def gateways(base_env: dict[str, str], log_dir: Path) -> Iterator[GatewayFactory]:
    factory = GatewayFactory(base_env, log_dir)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def gateway(worker: Service, gateways: GatewayFactory) -> Service:
    return gateways.start()


@pytest.fixture(scope="module")  # per module: a trainer holds its jobs' state
def trainer(gateway: Service, base_env: dict[str, str], log_dir) -> Iterator[Service]:
    """`lorafleet trainer` for the session's base model: one torch thread (the machine is shared)."""
    env = dict(base_env, LORAFLEET_TRAINER_THREADS="1", LORAFLEET_TRAINER_POLL_SECONDS="0.5",
               LORAFLEET_TRAINER_HEARTBEAT_SECONDS="1")
    service = start_service("trainer", env, log_dir, "")
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
async def make_key(db: asyncpg.Pool):
    async def factory(scopes: list[str] | None = None, tenant_id: str | None = None) -> TenantKey:
        service = TenancyService(db)
        if tenant_id is None:
            tenant_id = (await service.create_tenant(f"tenant-{random_token(6)}")).id
        created = await service.create_key(tenant_id, scopes=scopes)
        return TenantKey(tenant_id, created.id, created.secret)

    return factory


@pytest.fixture(scope="session")
async def tenant_key(make_key) -> TenantKey:
    return await make_key()


@pytest.fixture(scope="session")
def model_name() -> str:
    return "SmolLM2-135M-Instruct"


@pytest.fixture
async def client(gateway: Service, tenant_key: TenantKey) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=tenant_key.secret, max_retries=0) as sdk:
        yield sdk
