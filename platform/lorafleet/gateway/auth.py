"""Bearer API key → principal, with a short per-process cache.

Keys are looked up by the sha256 of the secret. A cached answer (positive or negative) is trusted
for ``key_cache_seconds`` (≤ 1 s), which bounds how late a revocation made through any gateway
replica takes effect everywhere, at one indexed lookup per key per interval. The cache is an LRU
of bounded size: a flood of distinct keys pushes out the oldest entries, never the whole cache.

A secret whose checksum (tenancy/keys.py) does not match costs no query at all — unless a legacy
key (minted before checksums) is still active anywhere, which one query every few seconds tells.

Failed sign-ins are throttled per client address (throttle.py), counting only failures that cost
a lookup: a missing, malformed or checksum-failing key is refused for free, so it counts for
nothing (it would let anyone lock out everyone behind one address at no cost). A throttled
address's next unknown keys get 429 without a lookup, but a key that exists is still served: its
digest is in the in-memory set of active keys (key_digests.py), which a made-up key's is not.
The admin token has a bucket of its own (:func:`verify_admin_token`).

While the database cannot be reached, a key this process saw within ``stale_seconds`` keeps its
last known answer (so unmetered traffic flows through an outage and its usage is spooled); an
unknown key gets 503.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass

import asyncpg
from lorafleet.core.errors import (
    AuthenticationFailed,
    PermissionDenied,
    ServiceUnavailable,
)
from lorafleet.db import DATABASE_UNAVAILABLE, queries
from lorafleet.gateway.key_digests import ActiveKeyDigests
from lorafleet.gateway.throttle import ADMIN, FailureThrottle
from lorafleet.tenancy.keys import has_valid_checksum, hash_secret, parse_secret
from lorafleet.tenancy.service import KeyAuthority

LEGACY_CHECK_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    key_id: str
    scopes: frozenset[str]
    mode: str
    metered: bool = False  # a rate limit, concurrency cap, spend limit or prepaid credit applies
    expires_at: dt.datetime | None = None

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise PermissionDenied(f"this API key lacks the {scope!r} scope")

    @property
    def authority(self) -> KeyAuthority:
        """What this key may hand out to the keys it creates."""
        return KeyAuthority(self.key_id, self.scopes, self.expires_at)


_BEARER = "bearer "
_UNKNOWN_KEY = "Incorrect API key provided, or the key was revoked or has expired."


def bearer_secret(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk_live_…'.", code="missing_api_key"
        )
    if authorization[: len(_BEARER)].lower() != _BEARER:
        raise AuthenticationFailed("The Authorization header must be 'Bearer <API key>'.", code="invalid_authorization_header")
    return authorization[len(_BEARER):].strip()


class KeyAuthenticator:
    def __init__(self, pool: asyncpg.Pool, cache_seconds: float, max_entries: int = 100_000,
                 stale_seconds: float = 600.0, throttle: FailureThrottle | None = None) -> None:
        self._pool = pool
        self._ttl = cache_seconds
        self._stale = stale_seconds
        self._max_entries = max_entries
        self.throttle = throttle
        self._digests = ActiveKeyDigests(pool)
        # digest → (looked up at, answer); least recently used first.
        self._cache: OrderedDict[bytes, tuple[float, Principal | None]] = OrderedDict()
        # Single flight: a burst of requests with the same key after its entry expired makes
        # one query, not one per request.
        self._pending: dict[bytes, asyncio.Task[Principal | None]] = {}
        self._legacy_active = True   # until the first check says otherwise
        self._legacy_checked = -LEGACY_CHECK_SECONDS
        self._legacy_task: asyncio.Task[bool] | None = None

    async def authenticate(self, authorization: str | None, client: str | None = None) -> Principal:
        """The key's principal; ``client`` (the caller's address) is throttled after repeated failed lookups."""
        # Refused without a lookup: free for the caller, so not counted against its address.
        secret = bearer_secret(authorization)
        if parse_secret(secret) is None:
            # Never echo the secret: it may be a real key pasted into the wrong place.
            raise AuthenticationFailed("Malformed API key. Keys look like 'sk_live_' followed by 43 letters and digits.")
        digest = hash_secret(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] + self._ttl > now:
            self._cache.move_to_end(digest)
            principal = cached[1]
            if principal is None:
                raise AuthenticationFailed(_UNKNOWN_KEY)  # answered from the cache: no lookup, not counted
            return principal
        if not has_valid_checksum(secret) and not await self._legacy_keys_active():
            raise AuthenticationFailed(_UNKNOWN_KEY)
        throttle = self.throttle if client is not None else None
        if throttle is not None and throttle.throttled(client) and not (cached is not None and cached[1] is not None) \
                and not await self._may_exist(digest):
            # 429 without a lookup while this address keeps failing — but only for keys that do not
            # exist: a valid key behind the same NAT or proxy as an attacker is still served.
            throttle.check(client)
        try:
            principal = await self._lookup_once(digest)
        except DATABASE_UNAVAILABLE:
            if cached is None or cached[0] + self._stale <= now:
                raise ServiceUnavailable("The key database is unavailable; retry shortly.",
                                         code="database_unavailable") from None
            principal = cached[1]
        if principal is None:
            if throttle is not None:
                throttle.failed(client)  # a lookup spent on a key that does not exist
            raise AuthenticationFailed(_UNKNOWN_KEY)
        self._digests.add(digest)
        return principal

    async def _may_exist(self, digest: bytes) -> bool:
        try:
            return await self._digests.may_exist(digest)
        except DATABASE_UNAVAILABLE:
            return False  # cannot tell: the throttle stands

    def forget_key(self, key_id: str) -> None:
        """A key revoked through this gateway is refused here at once (others within key_cache_seconds)."""
        for digest, (_, principal) in list(self._cache.items()):
            if principal is not None and principal.key_id == key_id:
                del self._cache[digest]

    async def _legacy_keys_active(self) -> bool:
        """Whether any pre-checksum key is still active (re-checked at most every few seconds)."""
        if time.monotonic() - self._legacy_checked < LEGACY_CHECK_SECONDS:
            return self._legacy_active
        if self._legacy_task is None:
            self._legacy_task = asyncio.create_task(self._check_legacy())
            self._legacy_task.add_done_callback(lambda _: setattr(self, "_legacy_task", None))
        try:
            return await asyncio.shield(self._legacy_task)
        except DATABASE_UNAVAILABLE:
            return self._legacy_active

    async def _check_legacy(self) -> bool:
        self._legacy_active = bool(await self._pool.fetchval(queries.legacy_keys_active))
        self._legacy_checked = time.monotonic()
        return self._legacy_active

    async def _lookup_once(self, digest: bytes) -> Principal | None:
        task = self._pending.get(digest)
        if task is None:
            task = asyncio.create_task(self._lookup_and_cache(digest))
            self._pending[digest] = task
            task.add_done_callback(lambda _: self._pending.pop(digest, None))
        # Shielded: one caller going away must not cancel the lookup the others wait on.
        return await asyncio.shield(task)

    async def _lookup_and_cache(self, digest: bytes) -> Principal | None:
        started = time.monotonic()  # staleness counts from before the read
        principal = await self._lookup(digest)
        self._cache[digest] = (started, principal)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return principal

    async def principal_of_key(self, key_id: str, tenant_id: str) -> Principal:
        """The principal of the tenant's key ``key_id`` (a batch runs as the key that created it): 401 once
        that key is revoked or expired, like the key itself would get."""
        try:
            principal = _principal(await self._pool.fetchrow(queries.authenticate_key_id, key_id, tenant_id))
        except DATABASE_UNAVAILABLE:
            raise ServiceUnavailable("The key database is unavailable; retry shortly.",
                                     code="database_unavailable") from None
        if principal is None:
            raise AuthenticationFailed("The API key that created this batch was revoked or has expired.",
                                       code="invalid_api_key")
        return principal

    async def _lookup(self, digest: bytes) -> Principal | None:
        return _principal(await self._pool.fetchrow(queries.authenticate_key, digest))


def _principal(row: asyncpg.Record | None) -> Principal | None:
    """A key's row (authenticate_key's columns) as its principal; None when missing or not active."""
    if row is None or not row["active"]:
        return None
    return Principal(tenant_id=row["tenant_id"], key_id=row["key_id"], scopes=frozenset(row["scopes"]),
                         mode=row["mode"], metered=bool(row["metered"]), expires_at=row["expires_at"])


def verify_admin_token(expected: str, throttle: FailureThrottle | None, authorization: str | None, client: str) -> None:
    """The operator's token, compared in constant time; repeated failures from one address are throttled
    in the admin bucket of their own: failed API keys never lock the operator out, nor the reverse.

    Unlike an API key, a throttled address is refused even with the right token: comparing costs
    nothing, so the throttle's only use here is against guessing a token an operator chose, and
    answering the right guess would tell the guesser. Only the failing address is refused.
    """
    if throttle is not None:
        throttle.check(client, ADMIN)
    try:
        secret = bearer_secret(authorization)
        if not expected or not hmac.compare_digest(secret.encode(), expected.encode()):
            raise AuthenticationFailed("Incorrect admin token.", code="invalid_admin_token")
    except AuthenticationFailed:
        if throttle is not None:
            throttle.failed(client, ADMIN)
        raise
