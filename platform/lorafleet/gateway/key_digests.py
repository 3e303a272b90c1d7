"""Which key hashes exist, in memory: how a throttled address's valid key is still served.

An address that keeps presenting well-formed but unknown keys is throttled (throttle.py): its next
unknown keys get 429 without a lookup. A valid key from that address (a NAT or proxy shared with
the attacker) must still work, and telling the two apart must not cost a lookup — that lookup is
what the throttle saves. So the gateway keeps the first 8 bytes of the sha256 of every active key
and looks up a throttled address's key only when its prefix is there: a random key matches with
probability ~n/2^64, a real key always (a revoked one may linger until the next full load; its
lookup then refuses it).

Loaded on first use (only a throttled address consults it), then topped up with the keys created
since the last read (with an overlap for transactions that commit late) at most every
``refresh_seconds``, and reloaded whole every ``reload_seconds``. A key is found within
``refresh_seconds`` of its creation, on every gateway. Memory: about 70 bytes per active key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import asyncpg
from lorafleet.db import queries

PREFIX_BYTES = 8
OVERLAP = dt.timedelta(seconds=10)   # longer than a key-creating transaction takes to commit
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class ActiveKeyDigests:
    def __init__(self, pool: asyncpg.Pool, refresh_seconds: float = 1.0, reload_seconds: float = 300.0) -> None:
        self._pool = pool
        self._refresh = refresh_seconds
        self._reload = reload_seconds
        self._prefixes: set[int] = set()
        self._since = _EPOCH                  # created_at of the newest key read so far
        self._refreshed = -float("inf")       # monotonic time of the last read
        self._loaded = -float("inf")          # ... and of the last full load
        self._reading: asyncio.Task[None] | None = None

    def add(self, digest: bytes) -> None:
        """A key this gateway has just seen valid (or created)."""
        self._prefixes.add(int.from_bytes(digest[:PREFIX_BYTES]))

    async def may_exist(self, digest: bytes) -> bool:
        """Whether ``digest`` may be an active key's (False: certainly not, as of ``refresh_seconds`` ago)."""
        if time.monotonic() - self._refreshed >= self._refresh:
            if self._reading is None:
                self._reading = asyncio.create_task(self._read())
                self._reading.add_done_callback(lambda _: setattr(self, "_reading", None))
            # Shielded: one caller going away must not cancel the read the others wait on.
            await asyncio.shield(self._reading)
        return int.from_bytes(digest[:PREFIX_BYTES]) in self._prefixes

    async def _read(self) -> None:
        started = time.monotonic()
        whole = started - self._loaded >= self._reload
        rows = await self._pool.fetch(queries.active_key_digests, _EPOCH if whole else self._since - OVERLAP)
        found = {int.from_bytes(row["prefix"]) for row in rows}
        if whole:
            self._prefixes = found
            self._loaded = started
        else:
            self._prefixes |= found
        if rows:
            self._since = max(self._since, max(row["created_at"] for row in rows))
        self._refreshed = started
