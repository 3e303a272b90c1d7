"""Bearer API key → principal, with a short per-process cache.

Keys are looked up by the sha256 of the secret. A cached answer (positive or negative) is trusted
for ``key_cache_seconds`` (≤ 1 s), which bounds how late a revocation made through any gateway
replica takes effect everywhere, at one indexed lookup per key per interval.

While the database cannot be reached, a key this process saw within ``stale_seconds`` keeps its
last known answer (so unmetered traffic flows through an outage and its usage is spooled); an
unknown key gets 503.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg

from lorafleet.core.errors import AuthenticationFailed, PermissionDenied, ServiceUnavailable
from lorafleet.db import DATABASE_UNAVAILABLE, queries
from lorafleet.tenancy.keys import hash_secret, parse_secret


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    key_id: str
    scopes: frozenset[str]
    mode: str
    metered: bool = False  # a rate limit, concurrency cap, spend limit or prepaid credit applies

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise PermissionDenied(f"this API key lacks the {scope!r} scope")


_BEARER = "bearer "


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
                 stale_seconds: float = 600.0) -> None:
        self._pool = pool
        self._ttl = cache_seconds
        self._stale = stale_seconds
        self._max_entries = max_entries
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}  # digest → (looked up at, answer)
        # Single flight: a burst of requests with the same key after its entry expired makes
        # one query, not one per request.
        self._pending: dict[bytes, asyncio.Task[Principal | None]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        secret = bearer_secret(authorization)
        if parse_secret(secret) is None:
            # Never echo the secret: it may be a real key pasted into the wrong place.
            raise AuthenticationFailed("Malformed API key. Keys look like 'sk_live_' followed by 43 letters and digits.")
        digest = hash_secret(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] + self._ttl > now:
            principal = cached[1]
        else:
            try:
                principal = await self._lookup_once(digest)
            except DATABASE_UNAVAILABLE:
                if cached is None or cached[0] + self._stale <= now:
                    raise ServiceUnavailable("The key database is unavailable; retry shortly.",
                                             code="database_unavailable") from None
                principal = cached[1]
        if principal is None:
            raise AuthenticationFailed("Incorrect API key provided, or the key was revoked or has expired.")
        return principal

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
        if len(self._cache) >= self._max_entries:
            self._cache.clear()
        self._cache[digest] = (started, principal)
        return principal

    async def _lookup(self, digest: bytes) -> Principal | None:
        row = await self._pool.fetchrow(queries.authenticate_key, digest)
        if row is None or not row["active"]:
            return None
        return Principal(tenant_id=row["tenant_id"], key_id=row["key_id"], scopes=frozenset(row["scopes"]),
                         mode=row["mode"], metered=bool(row["metered"]))
