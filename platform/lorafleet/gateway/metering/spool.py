"""Ledger rows the database could not take, kept on local disk until it can.

Each batch is appended to this process's spool file as one JSON line and fsynced before the rows
leave memory, so they survive the gateway dying during a database outage. Any gateway sharing
the folder replays any spool file (its own or one a dead process left): it claims a file by
renaming it to a new unique name, inserts its rows (idempotently: a row already in the database
is skipped), then deletes it. A replay that stops half-way (the database went away again) leaves
the claimed file, which the next replay finishes; new rows meanwhile go to a new spool file.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
from lorafleet.billing.ledger_row import LedgerRow


class _SpooledRow(LedgerRow, frozen=True, kw_only=True):
    cost_micro_usd: int | None = None  # a row spooled before migration 0012: its cost, whole micro-USD


_decode_spooled = msgspec.json.Decoder(list[_SpooledRow]).decode


def _decode_batch(line: bytes) -> list[LedgerRow]:
    """A spooled batch; a row an older gateway spooled carries its (rounded) cost in micro-USD."""
    return [msgspec.structs.replace(row, cost_pico_usd=row.cost_micro_usd * 1_000_000)
            if row.cost_micro_usd is not None and not row.cost_pico_usd else row
            for row in _decode_spooled(line)]


class LedgerSpool:
    def __init__(self, directory: Path, owner: str) -> None:
        self._directory = directory
        self._owner = owner
        self._path = directory / f"ledger-{owner}.jsonl"
        directory.mkdir(parents=True, exist_ok=True)

    def append(self, rows: Sequence[LedgerRow]) -> None:
        self._append(self._path, rows)

    def reject(self, rows: Sequence[LedgerRow]) -> None:
        """Rows the database refused on their own merits: kept (never replayed) for an operator."""
        self._append(self._directory / f"rejected-{self._owner}.jsonl", rows)

    def _append(self, path: Path, rows: Sequence[LedgerRow]) -> None:
        line = msgspec.json.encode(list(rows)) + b"\n"
        while True:
            with open(path, "ab") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    if os.fstat(handle.fileno()).st_ino != os.stat(path).st_ino:
                        continue  # a replay claimed the file between open and lock: start a new one
                except FileNotFoundError:
                    continue
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
                return

    def pending(self) -> bool:
        return any(self._directory.glob("ledger-*.jsonl")) or any(self._directory.glob("claimed-*.jsonl"))

    async def replay(self, insert: Callable[[list[LedgerRow]], Awaitable[int]]) -> int:
        replayed = 0
        mine = f"claimed-{self._owner}-"
        for path in sorted([*self._directory.glob("claimed-*.jsonl"), *self._directory.glob("ledger-*.jsonl")]):
            if path.name.startswith(mine):
                claimed = path  # an earlier replay of ours stopped half-way: finish it
            else:
                # A fresh, unique name: a rename never lands on a file that still holds rows.
                claimed = self._directory / f"{mine}{uuid.uuid4().hex}.jsonl"
                try:
                    os.rename(path, claimed)
                except FileNotFoundError:
                    continue  # another gateway claimed it first
            with open(claimed, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # waits for an append that opened it before the rename
                content = handle.read()
            for line in content.splitlines():
                if line.strip():
                    replayed += await insert(_decode_batch(line))  # raises while the database is away: file stays
            claimed.unlink()
        return replayed
