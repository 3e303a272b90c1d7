"""`lorafleet up`, its printed and README examples from a fresh shell, `lorafleet down` twice.

The real thing on free ports and a data dir of its own: embedded PostgreSQL, one vLLM worker, the
gateway, the trainer. The examples run in a clean environment with only what `make up` prints and the README
says to set; `down` must end every process `up` started (the engine's process group and the log
writers included) and stop the database with its shutdown checkpoint; a second `down` says there
is nothing to stop.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import psutil
from lorafleet.devtools.services import free_port

from tests.conftest import REPO_ROOT

FRESH_SHELL = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def _lorafleet(command: str, home: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorafleet.cli.main", command], cwd=home, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _fresh_shell(script: str, home: Path) -> subprocess.CompletedProcess:
    env = dict(FRESH_SHELL, HOME=str(home))
    if "PYTHONPATH" in os.environ:  # a worktree's sources over the shared virtualenv's (not needed in a clone)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(["bash", "-e", "-c", script], cwd=home, env=env, capture_output=True, text=True,
                          timeout=300)


def _printed_example(stdout: str) -> str:
    """The shell lines `up` prints to load the settings, then its Python here-document, verbatim."""
    lines = stdout.splitlines()
    load = next(line for line in lines if line.strip().startswith("set -a;"))
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith("<<'PY'"))
    end = lines.index("PY", start)
    return "\n".join([load, *lines[start:end + 1]]) + "\n"


def _readme_blocks() -> tuple[str, str]:
    """The "Two commands" section's shell block that runs the example, and its Python example."""
    section = (REPO_ROOT / "README.md").read_text().split("## Two commands", 1)[1].split("\n## ", 1)[0]
    shell = next(block for block in re.findall(r"```sh\n(.*?)```", section, re.S) if "example.py" in block)
    python = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    return shell, python


def _started_processes(data: Path) -> list[psutil.Process]:
    """Every process of the platform: gateway, workers, their engines, log writers, PostgreSQL."""
    pids = [int(path.read_text()) for path in (*data.glob("*.pid"), *(data / "logs").glob("*.log.pid"))]
    pids.append(int((data / "pgdata" / "postmaster.pid").read_text().splitlines()[0]))
    processes = []
    for pid in pids:
        process = psutil.Process(pid)
        processes += [process, *process.children(recursive=True)]
    return processes


async def _checkpoint_then_query(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CHECKPOINT")
        return await connection.fetchval("SELECT count(*) FROM tenants WHERE name = 'demo'")
    finally:
        await connection.close()


def test_up_examples_down_and_down_again(model_path):
    # Not under pytest's tmp_path: a pytest started as root elsewhere chmods /tmp/pytest-of-root to 0700.
    home = Path(tempfile.mkdtemp(prefix="lorafleet-up-"))
    data = home / ".lorafleet"
    (home / ".venv").symlink_to(sys.prefix)  # the virtualenv `make up` builds, where the README says it is
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env.update(LORAFLEET_DATA_DIR=str(data), LORAFLEET_GATEWAY_PORT=str(free_port()),
               LORAFLEET_WORKER_PORT=str(free_port()), LORAFLEET_MODEL_PATH=str(model_path),
               LORAFLEET_KV_CACHE_GIB="1", LORAFLEET_LOG_MAX_BYTES="65536", LORAFLEET_LOG_BACKUPS="2")
    started: list[psutil.Process] = []
    try:
        up = _lorafleet("up", home, env, timeout=900)
        assert up.returncode == 0, up.stderr[-4000:]
        started = _started_processes(data)
        assert len(started) >= 8  # gateway, worker, engine, trainer, three log writers, postmaster (and its children)

        printed = _fresh_shell(_printed_example(up.stdout), home)
        assert printed.returncode == 0 and printed.stdout.strip(), printed.stderr[-3000:]
        assert f"{sys.prefix}/bin/python - <<'PY'" in up.stdout  # a full path: no activated venv needed

        shell, python = _readme_blocks()
        (home / "example.py").write_text(python)
        readme = _fresh_shell(shell, home)
        assert readme.returncode == 0, readme.stderr[-3000:]
        assert readme.stdout.count("ChatCompletionChunk(") >= 2, readme.stdout[-2000:]  # the streamed chunks
        assert "key_" in readme.stdout  # `lorafleet keys list` found the remembered database by itself

        dsn = data.joinpath("secrets.env").read_text().split("database_url=", 1)[1].splitlines()[0]
        assert asyncio.run(_checkpoint_then_query(dsn)) == 1  # the demo tenant `up` created, read after the checkpoint
    finally:
        down = _lorafleet("down", home, env, timeout=300)
        leftovers = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        for process in leftovers:  # never leave an engine behind for the next test, whatever failed
            process.kill()
    try:
        assert down.returncode == 0, down.stderr[-3000:]
        assert not leftovers, [(p.pid, p.name()) for p in leftovers]
        log = (data / "pgdata" / "log").read_text()
        last_run = log[log.rindex("database system is ready to accept connections"):]
        assert "PANIC" not in log
        shutdown = last_run.index("received fast shutdown request")
        completed = last_run.index("checkpoint complete", last_run.index("checkpoint starting: shutdown", shutdown))
        assert last_run.index("database system is shut down") > completed
        assert "stopped the gateway" in down.stderr and "stopped the worker" in down.stderr
        assert "stopped the trainer" in down.stderr  # fine-tuning runs beside them

        again = _lorafleet("down", home, env, timeout=60)
        assert again.returncode == 0 and "nothing to stop" in again.stderr, again.stderr

        logs = sorted((data / "logs").glob("*.log*"))
        assert {"gateway.log", "worker.log", "trainer.log"} <= {path.name for path in logs}
        assert all(path.stat().st_size <= 65536 for path in logs if not path.name.endswith(".pid"))
    finally:
        shutil.rmtree(home, ignore_errors=True)
