"""Real processes: `lorafleet worker` (vLLM with SmolLM2) and `lorafleet gateway`, shared per session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import openai
import pytest

from lorafleet.core.ids import random_token
from lorafleet.tenancy import TenancyService

ENGINE_START_TIMEOUT = 420


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log_path: Path
    url: str

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode


def start_service(name: str, env: dict[str, str], log_dir: Path, url: str) -> Service:
    log_path = log_dir / f"{name}-{random_token(6)}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "lorafleet.cli.main", name.split("-")[0]],
        env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    return Service(name, process, log_path, url)


def wait_for(service: Service, path: str, timeout: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{service.log_text()[-4000:]}")
        try:
            if httpx.get(service.url + path, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{service.name} not ready at {path} after {timeout} s:\n{service.log_text()[-4000:]}")


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def base_env(database_url: str, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env.update(
        LORAFLEET_DATABASE_URL=database_url,
        LORAFLEET_DATA_DIR=str(tmp_path_factory.mktemp("data")),
        LORAFLEET_INTERNAL_TOKEN=random_token(32),
        LORAFLEET_ADMIN_TOKEN=random_token(32),
        LORAFLEET_MODEL_PATH=str(model_path),
        LORAFLEET_KV_CACHE_GIB="1",
        LORAFLEET_MAX_MODEL_LEN="2048",
        LORAFLEET_LOG_FORMAT="json",
        LORAFLEET_WORKER_REFRESH_SECONDS="0.5",
    )
    return env


@pytest.fixture(scope="session")
def worker(base_env: dict[str, str], log_dir: Path) -> Iterator[Service]:
    port = free_port()
    env = dict(base_env, LORAFLEET_WORKER_PORT=str(port))
    service = start_service("worker", env, log_dir, f"http://127.0.0.1:{port}")
    try:
        wait_for(service, "/health", ENGINE_START_TIMEOUT)
        yield service
    finally:
        service.stop()


class GatewayFactory:
    def __init__(self, base_env: dict[str, str], log_dir: Path) -> None:
        self.base_env = base_env
        self.log_dir = log_dir
        self.started: list[Service] = []

    def start(self, ready_path: str = "/readyz", **overrides: str) -> Service:
        port = free_port()
        env = dict(self.base_env, LORAFLEET_GATEWAY_PORT=str(port), **overrides)
        service = start_service("gateway", env, self.log_dir, f"http://127.0.0.1:{port}")
        self.started.append(service)
        wait_for(service, ready_path, 120)
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


@dataclass
class TenantKey:
    tenant_id: str
    key_id: str
    secret: str


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


async def ledger_row(db: asyncpg.Pool, request_id: str, timeout: float = 5.0) -> asyncpg.Record:
    """The ledger row of a request; the gateway writes rows in batches every few ms."""
    deadline = time.monotonic() + timeout
    while True:
        row = await db.fetchrow("SELECT * FROM usage_ledger WHERE request_id = $1", request_id)
        if row is not None or time.monotonic() > deadline:
            assert row is not None, f"no ledger row for {request_id}"
            return row
        await _sleep(0.05)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
