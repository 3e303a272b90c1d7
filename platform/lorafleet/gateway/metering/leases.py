"""Admission leases: a key's concurrent requests admitted from this gateway's memory, within exact limits.

A metered admission is a round trip to PostgreSQL (admission.py). When a key already has a request
in flight through this gateway, the next admission asks for a lease instead: ``lorafleet_lease``
(migrations/0011) reserves in one transaction a block of up to ``max_units`` requests like this
one — their worst-case cost against the spend limit and credits, their share of the key's request
and token rate — exactly as that many single admissions would. Requests that fit in what is left
of the block are admitted here, with no round trip, until the block is used up or ``seconds`` have
passed. A sequential client (one request at a time) is always admitted one by one.

The bounds (README "Admission leases"):

- **No overshoot.** Whatever a lease admits was reserved in the database before; the books are
  the ones single admissions keep. The one exception is the operator's: a spend limit lowered or
  credits taken back while a lease is held apply from the next lease (within ``seconds``), so a
  held lease can still admit what it had reserved.
- **Little under-admission.** A lease takes at most 1/:data:`LEASE_SHARE` of each headroom left
  (requests and tokens this minute, spend limit, credits) and never exists for a tenant with a
  concurrency cap, so limits close to being reached are admitted one by one, exactly.
- **Released with its rows.** A lease stops admitting when it is used up, replaced or ``seconds``
  old; once its last request is over, the ledger writer releases it in the transaction that
  inserts those requests' rows, giving back the requests and tokens it did not use. A gateway
  shutting down releases its leases with its last rows; one that dies holding a lease is swept
  like any reservation.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import asyncpg
from lorafleet.core.ids import new_id
from lorafleet.gateway.metering.ledger_row import LeaseRelease
from lorafleet.gateway.metering.ratelimit import rate_limit_headers
from lorafleet.gateway.metering.writer import LedgerWriter

T = TypeVar("T")

LEASE_SHARE = 64          # a lease takes at most 1/64 of any headroom
UNITS_PER_CONCURRENT = 8  # a lease holds about this many requests per request in flight for the key


class Lease:
    """A block of admissions reserved for one key; what is left of it, and the requests running on it."""

    __slots__ = ("id", "key_id", "requests", "amount", "tokens", "expires", "outstanding", "retired", "_row",
                 "_taken_at", "_on_release")

    def __init__(self, lease_id: str, key_id: str, units: int, amount: int, tokens: int, expires: float,
                 row: asyncpg.Record, on_release: Callable[[Lease], None]) -> None:
        self.id = lease_id
        self.key_id = key_id
        self.requests = units      # left to admit
        self.amount = amount       # µUSD left to admit
        self.tokens = tokens       # tokens (worst case) left to admit
        self.expires = expires
        self.outstanding = 0       # admitted and not over yet
        self.retired = False       # admits nothing more; released once outstanding is 0
        self._row = row            # the rate-limit state when it was granted
        self._taken_at = time.monotonic()
        self._on_release = on_release

    def take(self, amount: int, tokens: int, now: float) -> bool:
        if self.retired or now >= self.expires or self.requests < 1 or amount > self.amount or tokens > self.tokens:
            return False
        self.requests -= 1
        self.amount -= amount
        self.tokens -= tokens
        self.outstanding += 1
        if not self.requests:
            self.retired = True  # used up: released when this last request is over
        return True

    def done(self) -> None:
        self.outstanding -= 1
        if self.retired:
            self.retire()

    def retire(self) -> None:
        """Admit nothing more; released now if no request runs on it, else when the last one ends."""
        self.retired = True
        if self.outstanding == 0 and self._on_release is not None:
            on_release, self._on_release = self._on_release, None
            on_release(self)  # once

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers as single admissions would have left them."""
        return rate_limit_headers(self._row, unused_requests=self.requests, unused_tokens=self.tokens,
                                  elapsed_ms=(time.monotonic() - self._taken_at) * 1000)


class LeaseBook:
    """This gateway's leases, one current per key, and the metered requests in flight per key."""

    def __init__(self, ledger: LedgerWriter, *, max_units: int, seconds: float) -> None:
        self._ledger = ledger
        self.max_units = max_units
        self._seconds = seconds
        self._current: dict[str, Lease] = {}
        self._opening: dict[str, asyncio.Task[Any]] = {}
        self.in_flight: Counter[str] = Counter()
        self.granted = 0   # leases opened (for tests and metrics)

    def take(self, key_id: str, amount: int, tokens: int) -> Lease | None:
        """The key's current lease, if this request fits in what is left of it (then counted on it)."""
        lease = self._current.get(key_id)
        if lease is not None and lease.take(amount, tokens, time.monotonic()):
            return lease
        return None

    def units_wanted(self, key_id: str) -> int:
        """How many requests to lease for this key now: none for a sequential client."""
        concurrent = self.in_flight[key_id]  # this request included
        if not self.max_units or concurrent < 2:
            return 0
        return min(self.max_units, max(4, UNITS_PER_CONCURRENT * concurrent))

    def opening(self, key_id: str) -> asyncio.Task[Any] | None:
        """A lease being granted for this key (wait for it rather than ask for a second one)."""
        return self._opening.get(key_id)

    def start_opening(self, key_id: str, granting: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(granting)
        self._opening[key_id] = task
        task.add_done_callback(lambda _: self._opening.pop(key_id, None))
        return task

    def open(self, key_id: str, lease_id: str, units: int, amount: int, tokens: int, row: asyncpg.Record) -> Lease:
        lease = Lease(lease_id, key_id, units, amount, tokens, time.monotonic() + self._seconds, row, self._release)
        previous = self._current.get(key_id)
        self._current[key_id] = lease
        if previous is not None:
            previous.retire()
        asyncio.get_running_loop().call_later(self._seconds, lease.retire)  # an idle lease goes back at expiry
        self.granted += 1
        return lease

    def close(self) -> None:
        """Shutdown: every lease stops admitting, so those without running requests are released now
        (before the ledger writer's last flush)."""
        for lease in list(self._current.values()):
            lease.retire()

    def _release(self, lease: Lease) -> None:
        if self._current.get(lease.key_id) is lease:
            del self._current[lease.key_id]
        self._ledger.release_lease(LeaseRelease(lease.id, lease.key_id, lease.requests, lease.tokens))

    def track(self, key_id: str) -> Callable[[], None]:
        """Count one metered request of this key in flight; the returned callable uncounts it (once)."""
        self.in_flight[key_id] += 1
        counted = True

        def untrack() -> None:
            nonlocal counted
            if counted:
                counted = False
                left = self.in_flight[key_id] - 1
                if left:
                    self.in_flight[key_id] = left
                else:
                    del self.in_flight[key_id]

        return untrack


def lease_id() -> str:
    return new_id("lease")
