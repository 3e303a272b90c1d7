"""The key cache's logic: single flight, bounded staleness (a counting stand-in for the pool)."""

import asyncio
import datetime as dt

import pytest
from lorafleet.core.errors import AuthenticationFailed, RateLimited, ServiceUnavailable
from lorafleet.gateway.auth import KeyAuthenticator
from lorafleet.gateway.throttle import FailureThrottle
from lorafleet.tenancy.keys import generate_secret, hash_secret


class CountingPool:
    def __init__(self, legacy_keys: bool = False) -> None:
        self.queries = 0
        self.legacy_checks = 0
        self.legacy_keys = legacy_keys
        self.active = True
        self.down = False

    async def fetchrow(self, sql, digest):
        self.queries += 1
        await asyncio.sleep(0.01)
        if self.down:
            raise ConnectionRefusedError("database stopped")
        return {"key_id": "key_1", "tenant_id": "ten_1", "scopes": ["inference"], "mode": "live", "active": self.active,
                "metered": False, "expires_at": None}

    async def fetchval(self, sql):
        self.legacy_checks += 1
        return self.legacy_keys

    async def fetch(self, sql, since):
        return []  # the active keys' digests: none unless a test says otherwise


def _random_well_formed(valid_checksum: bool) -> str:
    secret = generate_secret()
    if valid_checksum:
        return secret
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


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


async def test_a_key_with_a_wrong_checksum_costs_no_lookup_when_no_legacy_key_is_active():
    pool = CountingPool(legacy_keys=False)
    auth = KeyAuthenticator(pool, cache_seconds=1)
    for _ in range(200):
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(f"Bearer {_random_well_formed(valid_checksum=False)}")
    assert pool.queries == 0, "made-up keys never reach the database"
    assert pool.legacy_checks == 1, "whether legacy keys exist is asked once per interval, not per request"


async def test_while_legacy_keys_exist_unchecksummed_secrets_are_still_looked_up():
    pool = CountingPool(legacy_keys=True)
    auth = KeyAuthenticator(pool, cache_seconds=1)
    principal = await auth.authenticate(f"Bearer {_random_well_formed(valid_checksum=False)}")
    assert principal.key_id == "key_1" and pool.queries == 1


async def test_the_cache_evicts_least_recently_used_entries_instead_of_clearing():
    pool = CountingPool()
    auth = KeyAuthenticator(pool, cache_seconds=60, max_entries=10)
    hot = f"Bearer {generate_secret()}"
    await auth.authenticate(hot)
    for _ in range(30):
        await auth.authenticate(hot)  # stays the most recently used
        await auth.authenticate(f"Bearer {generate_secret()}")
    queries = pool.queries
    await auth.authenticate(hot)
    assert pool.queries == queries, "a hot key survives a flood of others"


async def test_repeated_failures_from_one_address_are_refused_without_a_lookup():
    from lorafleet.core.errors import RateLimited
    from lorafleet.gateway.throttle import FailureThrottle

    class Unknown(CountingPool):
        async def fetchrow(self, sql, digest):
            self.queries += 1
            return None

    pool = Unknown()
    auth = KeyAuthenticator(pool, cache_seconds=1, throttle=FailureThrottle(per_minute=5))
    outcomes = []
    for _ in range(12):
        try:
            await auth.authenticate(f"Bearer {generate_secret()}", client="203.0.113.9")
        except RateLimited as exc:
            outcomes.append(("429", exc.headers["Retry-After"]))
        except AuthenticationFailed:
            outcomes.append(("401", None))
    assert [o for o, _ in outcomes[:5]] == ["401"] * 5
    assert outcomes[-1][0] == "429" and int(outcomes[-1][1]) >= 1
    assert pool.queries < 12, "refused attempts made no lookup"
    # Another address is not affected.
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(f"Bearer {generate_secret()}", client="198.51.100.7")


class _KnownKeys(CountingPool):
    """A database that knows ``valid`` (and nothing else); lookups and digest reads counted."""

    def __init__(self, valid: list[str]) -> None:
        super().__init__()
        self.valid = {hash_secret(secret) for secret in valid}
        self.digest_reads = 0

    async def fetchrow(self, sql, digest):
        self.queries += 1
        if digest not in self.valid:
            return None
        return {
            "key_id": "key_ok", "tenant_id": "ten_ok", "scopes": ["inference"], "mode": "live", "active": True,
            "metered": False, "expires_at": None}

    async def fetch(self, sql, since):
        self.digest_reads += 1
        return [{"prefix": digest[:8], "created_at": dt.datetime.now(dt.UTC)} for digest in self.valid]


async def _outcome(auth, secret: str, client: str) -> str:
    try:
        await auth.authenticate(f"Bearer {secret}", client=client)
    except RateLimited:
        return "429"
    except AuthenticationFailed:
        return "401"
    return "200"


async def test_keys_refused_without_a_lookup_do_not_count_against_their_address():
    pool = _KnownKeys([])
    auth = KeyAuthenticator(pool, cache_seconds=1, throttle=FailureThrottle(per_minute=5))
    made_up = ["x" * 20, "sk_live_short", _random_well_formed(valid_checksum=False)]
    outcomes = {await _outcome(auth, made_up[i % 3], "10.9.9.9") for i in range(65)}
    outcomes.add(await _outcome(auth, "", "10.9.9.9"))
    assert outcomes == {"401"} and pool.queries == 0
    assert not auth.throttle.throttled("10.9.9.9"), "free refusals cost the address nothing"
    assert await _outcome(auth, generate_secret(), "10.9.9.9") == "401", "a lookup is still made, and answered"


async def test_a_valid_key_from_a_throttled_address_is_served_and_unknown_ones_are_not_looked_up():
    valid = generate_secret()
    pool = _KnownKeys([valid])
    auth = KeyAuthenticator(pool, cache_seconds=1, throttle=FailureThrottle(per_minute=5))
    outcomes = [await _outcome(auth, generate_secret(), "10.9.9.9") for _ in range(12)]
    assert outcomes[:5] == ["401"] * 5 and outcomes[-1] == "429", "well-formed unknown keys are throttled"
    looked_up = pool.queries
    assert looked_up < 12
    assert await _outcome(auth, valid, "10.9.9.9") == "200", "a key that exists is served from a throttled address"
    assert pool.queries == looked_up + 1
    for _ in range(20):
        assert await _outcome(auth, generate_secret(), "10.9.9.9") == "429"
    assert pool.queries == looked_up + 1, "unknown keys from the throttled address cost no lookup"
    assert pool.digest_reads == 1, "the active digests are read once per interval, not per request"


async def test_the_admin_token_has_a_bucket_of_its_own():
    from lorafleet.gateway.auth import verify_admin_token

    throttle = FailureThrottle(per_minute=5)
    auth = KeyAuthenticator(_KnownKeys([]), cache_seconds=1, throttle=throttle)
    for _ in range(12):  # an API-key attacker at the operator's address
        await _outcome(auth, generate_secret(), "10.9.9.9")
    assert throttle.throttled("10.9.9.9")
    verify_admin_token("the-admin-token", throttle, "Bearer the-admin-token", "10.9.9.9")  # still the operator's

    guesses = []
    for _ in range(12):  # an admin-token guesser at another address
        try:
            verify_admin_token("the-admin-token", throttle, "Bearer guess", "10.7.7.7")
        except RateLimited:
            guesses.append("429")
        except AuthenticationFailed:
            guesses.append("401")
    assert guesses[:5] == ["401"] * 5 and guesses[-1] == "429", "guessing the admin token is throttled"
    with pytest.raises(RateLimited):  # a throttled guesser learns nothing, even from the right guess
        verify_admin_token("the-admin-token", throttle, "Bearer the-admin-token", "10.7.7.7")
    assert not throttle.throttled("10.7.7.7"), "admin failures do not throttle the address's API keys"
