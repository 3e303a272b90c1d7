"""What a local install keeps in the data dir: generated secrets, the embedded database's DSN, pids.

Settings from the environment always win; these files only fill what the environment leaves empty,
so `lorafleet keys create …` after `lorafleet up` needs no exports.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import msgspec
from lorafleet.core.ids import random_token
from lorafleet.core.settings import Settings, get_settings


class RuntimeFiles:
    def __init__(self, data_path: Path) -> None:
        self.root = data_path
        self.secrets = data_path / "secrets.env"
        self.database_url = data_path / "database.url"
        self.pgdata = data_path / "pgdata"
        self.logs = data_path / "logs"
        self.demo_env = data_path / "demo.env"

    def pid_file(self, name: str) -> Path:
        return self.root / f"{name}.pid"

    def read_secrets(self) -> dict[str, str]:
        if not self.secrets.exists():
            return {}
        pairs = (line.split("=", 1) for line in self.secrets.read_text().splitlines() if "=" in line)
        return {key.strip(): value.strip() for key, value in pairs}

    def ensure_secrets(self) -> dict[str, str]:
        secrets = self.read_secrets()
        changed = False
        for name in ("internal_token", "admin_token"):
            if not secrets.get(name):
                secrets[name] = random_token(40)
                changed = True
        if changed:
            write_private(self.secrets, "".join(f"{k}={v}\n" for k, v in sorted(secrets.items())))
        return secrets


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, from its first byte (never chmod-ed afterwards).

    The data dir itself is made owner-only too. A file that exists with wider permissions is
    replaced, not rewritten in place, so an old world-readable inode never receives the secret.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def effective_settings(settings: Settings | None = None) -> Settings:
    settings = settings or get_settings()
    files = RuntimeFiles(settings.data_path)
    secrets = files.read_secrets()
    updates: dict[str, str] = {}
    if not settings.database_url and files.database_url.exists():
        updates["database_url"] = files.database_url.read_text().strip()
    for name in ("internal_token", "admin_token"):
        if not getattr(settings, name) and secrets.get(name):
            updates[name] = secrets[name]
    return msgspec.structs.replace(settings, **updates) if updates else settings


def pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None


def stop_process(pid_file: Path, grace_seconds: float = 30.0) -> bool:
    pid = pid_alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pid_file.unlink(missing_ok=True)
    return True
