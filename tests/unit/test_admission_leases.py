"""Admission leases in the gateway's memory (metering/leases.py): what one admits, when it is released,
and the headers its requests see. The SQL that grants and releases them is tested on PostgreSQL in
tests/inprocess/test_leases_on_postgres.py."""

from __future__ import annotations

import asyncio
import time

from lorafleet.gateway.metering.ledger_row import LeaseRelease
from lorafleet.gateway.metering.leases import LeaseBook
from lorafleet.gateway.metering.ratelimit import rate_limit_headers


class RecordingLedger:
    def __init__(self) -> None:
        self.released: list[LeaseRelease] = []

    def release_lease(self, release: LeaseRelease) -> None:
        self.released.append(release)


def _row(units: int, limit: int = 6000, remaining_before: int = 6000, reset_before_ms: float = 0.0) -> dict:
    """The rate state lorafleet_admit returns after admitting ``units`` requests at once."""
    per_request_ms = 60_000 / limit
    return {"requests_limit": limit, "requests_remaining": remaining_before - units,
            "requests_reset_ms": reset_before_ms + units * per_request_ms,
            "tokens_limit": None, "tokens_remaining": None, "tokens_reset_ms": None}


def _book(max_units: int = 256, seconds: float = 2.0) -> tuple[LeaseBook, RecordingLedger]:
    ledger = RecordingLedger()
    return LeaseBook(ledger, max_units=max_units, seconds=seconds), ledger  # type: ignore[arg-type]


def test_a_sequential_client_is_never_leased_and_a_concurrent_one_is_sized_by_its_concurrency():
    book, _ = _book()
    first = book.track("key_a")
    assert book.units_wanted("key_a") == 0, "one request at a time: admitted one by one"
    others = [book.track("key_a") for _ in range(3)]
    assert book.units_wanted("key_a") == 32  # 4 in flight × 8
    many = [book.track("key_a") for _ in range(100)]
    assert book.units_wanted("key_a") == 256, "capped at the setting"
    for untrack in [first, *others, *many]:
        untrack()
        untrack()  # twice is once
    assert book.in_flight["key_a"] == 0
    assert _book(max_units=0)[0].units_wanted("key_a") == 0, "0 turns leases off"


async def test_a_lease_admits_what_it_holds_and_nothing_more():
    book, _ = _book()
    lease = book.open("key_a", "lease_1", units=3, amount=300, tokens=30, row=_row(3))
    assert book.take("key_a", 100, 10) is lease
    assert book.take("key_a", 250, 10) is None, "more money than is left"
    assert book.take("key_a", 100, 25) is None, "more tokens than are left"
    assert book.take("key_a", 100, 10) is lease
    assert book.take("key_a", 100, 10) is lease
    assert book.take("key_a", 1, 1) is None, "every request used"
    assert book.take("key_b", 1, 1) is None, "a lease is one key's"
    assert (lease.requests, lease.amount, lease.tokens, lease.outstanding) == (0, 0, 0, 3)


async def test_an_expired_lease_admits_nothing_and_goes_back_once_its_requests_are_over():
    book, ledger = _book(seconds=0.05)
    lease = book.open("key_a", "lease_1", units=10, amount=1000, tokens=100, row=_row(10))
    assert book.take("key_a", 100, 10) is lease
    time.sleep(0.06)
    assert book.take("key_a", 1, 1) is None, "past its time, even with room left"
    await asyncio.sleep(0.01)
    assert ledger.released == [], "a request still runs on it"
    lease.done()
    assert ledger.released == [LeaseRelease("lease_1", "key_a", 9, 90)]


async def test_an_idle_lease_goes_back_at_expiry_without_any_request():
    book, ledger = _book(seconds=0.05)
    lease = book.open("key_a", "lease_1", units=10, amount=1000, tokens=100, row=_row(10))
    book.take("key_a", 100, 10)
    lease.done()
    assert ledger.released == [], "idle but not expired: the next request of the key may use it"
    await asyncio.sleep(0.08)
    assert ledger.released == [LeaseRelease("lease_1", "key_a", 9, 90)]


async def test_shutdown_releases_every_idle_lease():
    book, ledger = _book()
    book.open("key_a", "lease_1", units=10, amount=1000, tokens=100, row=_row(10))
    busy = book.open("key_b", "lease_2", units=10, amount=1000, tokens=100, row=_row(10))
    book.take("key_b", 100, 10)
    book.close()
    assert ledger.released == [LeaseRelease("lease_1", "key_a", 10, 100)]
    busy.done()
    assert ledger.released[-1] == LeaseRelease("lease_2", "key_b", 9, 90)


async def test_a_used_up_lease_is_released_once_when_its_last_request_is_over():
    book, ledger = _book()
    lease = book.open("key_a", "lease_1", units=2, amount=1000, tokens=100, row=_row(2))
    book.take("key_a", 100, 10)
    book.take("key_a", 100, 10)
    lease.done()
    assert ledger.released == [], "a request still runs on it"
    lease.done()
    assert ledger.released == [LeaseRelease("lease_1", "key_a", 0, 80)]
    assert book.take("key_a", 1, 1) is None, "a released lease admits nothing"
    lease.retire()
    assert len(ledger.released) == 1


async def test_a_new_lease_retires_the_old_one_which_is_released_after_its_own_requests():
    book, ledger = _book()
    old = book.open("key_a", "lease_1", units=2, amount=200, tokens=20, row=_row(2))
    book.take("key_a", 100, 10)
    new = book.open("key_a", "lease_2", units=5, amount=500, tokens=50, row=_row(5))
    assert ledger.released == []
    assert book.take("key_a", 100, 10) is new, "the new lease admits; the old one no more"
    old.done()
    assert ledger.released == [LeaseRelease("lease_1", "key_a", 1, 10)]
    new.done()
    assert len(ledger.released) == 1, "the current lease stays for the key's next request"


async def test_a_leased_request_sees_the_headers_single_admissions_would_have_given():
    limit, units = 6000, 10
    book, _ = _book()
    lease = book.open("key_a", "lease_1", units=units, amount=1000, tokens=100,
                      row=_row(units, limit=limit, remaining_before=5000, reset_before_ms=10_000))
    for admitted in range(1, 4):
        book.take("key_a", 1, 1)
        one_by_one = rate_limit_headers(_row(admitted, limit=limit, remaining_before=5000, reset_before_ms=10_000))
        leased = lease.headers()
        assert leased["x-ratelimit-remaining-requests"] == one_by_one["x-ratelimit-remaining-requests"] \
            == str(5000 - admitted)
        assert leased["x-ratelimit-limit-requests"] == str(limit)
        assert "x-ratelimit-limit-tokens" not in leased, "no token limit, no token headers"
        # The reset time counts down from when the lease was granted (a few ms at most here).
        assert 10_000 + admitted * 10 - 50 <= _ms(leased["x-ratelimit-reset-requests"]) <= 10_000 + admitted * 10


def _ms(text: str) -> float:
    return float(text[:-2]) if text.endswith("ms") else float(text[:-1]) * 1000
