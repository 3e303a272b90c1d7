"""The key cache's logic: single flight, bounded staleness (a counting stand-in for the pool)."""

import asyncio

import pytest

from lorafleet.core.errors import AuthenticationFailed, ServiceUnavailable
from lorafleet.gateway.auth import KeyAuthenticator
from lorafleet.tenancy.keys import generate_secret


class CountingPool:
    def __init__(self) -> None:
        self.queries = 0
        self.active = True
        self.down = False

    async def fetchrow(self, sql, digest):
        self.queries += 1
        await asyncio.sleep(0.01)
        if self.down:
            raise ConnectionRefusedError("database stopped")
        return {"key_id": "key_1", "tenant_id": "ten_1", "scopes": ["inference"], "mode": "live", "active": self.active,
                "metered": False}


async def test_a_burst_makes_one_query_and_revocation_shows_after_the_ttl():
    pool = CountingPool()
    auth = KeyAuthenticator(pool, cache_seconds=0.2)
    header = f"Bearer {generate_secret()}"
    principals = await asyncio.gather(*(auth.authenticate(header) for _ in range(50)))
    assert pool.queries == 1 and {p.tenant_id for p in principals} == {"ten_1"}

    pool.active = False  # revoked in the database
    await auth.authenticate(header)  # still cached
    await asyncio.sleep(0.25)
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(header)
    assert pool.queries == 2


async def test_a_cancelled_caller_does_not_cancel_the_shared_lookup():
    pool = CountingPool()
    auth = KeyAuthenticator(pool, cache_seconds=1)
    header = f"Bearer {generate_secret()}"
    first = asyncio.create_task(auth.authenticate(header))
    await asyncio.sleep(0)
    second = asyncio.create_task(auth.authenticate(header))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second).key_id == "key_1"
    assert pool.queries == 1


async def test_during_an_outage_a_recently_seen_key_keeps_its_answer_and_an_unknown_key_gets_503():
    pool = CountingPool()
    auth = KeyAuthenticator(pool, cache_seconds=0.05, stale_seconds=0.3)
    known, unknown = f"Bearer {generate_secret()}", f"Bearer {generate_secret()}"
    await auth.authenticate(known)
    pool.down = True
    await asyncio.sleep(0.1)  # past the fresh window: the lookup is retried and fails
    assert (await auth.authenticate(known)).tenant_id == "ten_1"
    with pytest.raises(ServiceUnavailable):
        await auth.authenticate(unknown)
    await asyncio.sleep(0.3)  # past the stale window too
    with pytest.raises(ServiceUnavailable):
        await auth.authenticate(known)
    pool.down = False
    assert (await auth.authenticate(known)).tenant_id == "ten_1"
