"""Ledger rows the database could not take, kept on local disk until it can.

Each batch is appended to this process's spool file as one JSON line and fsynced before the rows
leave memory, so they survive the gateway dying during a database outage. Any gateway sharing
the folder replays any spool file (its own or one a dead process left): it claims a file by
renaming it, inserts its rows (idempotently: a row already in the database is skipped), then
deletes it. A crash mid-replay leaves the claimed file, which the next replay picks up.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from lorafleet.gateway.ledger import UsageRow


class LedgerSpool:
    def __init__(self, directory: Path, owner: str) -> None:
        self._directory = directory
        self._owner = owner
        self._path = directory / f"ledger-{owner}.jsonl"
        directory.mkdir(parents=True, exist_ok=True)

    def append(self, rows: Sequence[UsageRow]) -> None:
        line = msgspec.json.encode(list(rows)) + b"\n"
        while True:
            with open(self._path, "ab") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    if os.fstat(handle.fileno()).st_ino != os.stat(self._path).st_ino:
                        continue  # a replay claimed the file between open and lock: start a new one
                except FileNotFoundError:
                    continue
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
                return

    def pending(self) -> bool:
        return any(self._directory.glob("ledger-*.jsonl*"))

    async def replay(self, insert: Callable[[list[UsageRow]], Awaitable[int]]) -> int:
        from lorafleet.gateway.ledger import UsageRow

        decode = msgspec.json.Decoder(list[UsageRow]).decode
        replayed = 0
        for path in sorted(self._directory.glob("ledger-*.jsonl*")):
            claimed = path if path.name.endswith(f".replaying-{self._owner}") else path.with_name(
                f"{path.name.split('.jsonl')[0]}.jsonl.replaying-{self._owner}")
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another gateway claimed it first
            with open(claimed, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # waits for an append that opened it before the rename
                content = handle.read()
            for line in content.splitlines():
                if line.strip():
                    replayed += await insert(decode(line))  # raises while the database is away: file stays
            claimed.unlink()
        return replayed
