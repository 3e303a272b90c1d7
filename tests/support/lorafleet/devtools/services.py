"""Start `lorafleet worker` / `lorafleet gateway` as real subprocesses, wait for them, stop them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from lorafleet.core.ids import random_token

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
    internal_token: str = ""  # workers: what a gateway presents (their routes all need it)

    @property
    def internal_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.internal_token}"}

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


def start_service(command: str, env: dict[str, str], log_dir: Path, url: str) -> Service:
    log_path = log_dir / f"{command}-{random_token(6)}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "lorafleet.cli.main", command],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    return Service(command, process, log_path, url)


def wait_for(service: Service, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{service.log_text()[-4000:]}")
        try:
            if httpx.get(service.url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{service.name} not ready at {path} after {timeout} s:\n{service.log_text()[-4000:]}")


def start_worker(env: dict[str, str], log_dir: Path) -> Service:
    """A worker with only a worker's secrets, as production starts it (never the admin token)."""
    from lorafleet.worker.engine import NOT_FOR_WORKERS

    port = free_port()
    worker_env = {name: value for name, value in env.items() if name not in NOT_FOR_WORKERS}
    service = start_service("worker", dict(worker_env, LORAFLEET_WORKER_PORT=str(port)), log_dir,
                            f"http://127.0.0.1:{port}")
    service.internal_token = env.get("LORAFLEET_INTERNAL_TOKEN", "")
    _ready_or_stopped(service, "/health", ENGINE_START_TIMEOUT)
    return service


def start_gateway(env: dict[str, str], log_dir: Path, ready_path: str = "/readyz?workers=1") -> Service:
    port = free_port()
    service = start_service("gateway", dict(env, LORAFLEET_GATEWAY_PORT=str(port)), log_dir, f"http://127.0.0.1:{port}")
    _ready_or_stopped(service, ready_path, 120)
    return service


def _ready_or_stopped(service: Service, path: str, timeout: float) -> None:
    """Wait until ready; one that is not in time is stopped before the error (nobody else holds it to stop:
    a worker left behind kept restarting its engine, and the machine's cores, after its test had failed)."""
    try:
        wait_for(service, path, timeout)
    except BaseException:
        service.stop()
        raise


def platform_env(database_url: str, model_path: Path, data_dir: Path) -> dict[str, str]:
    """The environment of a worker and gateways sharing one database, outside any `lorafleet up` state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env.update(
        LORAFLEET_DATABASE_URL=database_url,
        LORAFLEET_DATA_DIR=str(data_dir),
        LORAFLEET_INTERNAL_TOKEN=random_token(32),
        LORAFLEET_ADMIN_TOKEN=random_token(32),
        LORAFLEET_MODEL_PATH=str(model_path),
        LORAFLEET_KV_CACHE_GIB="1",
        LORAFLEET_LOG_FORMAT="json",
        LORAFLEET_WORKER_REFRESH_SECONDS="0.5",
    )
    return env
