"""``Idempotency-Key`` on every POST that creates or moves something, as Stripe does it.

The first request with a key claims it (``in_progress``) and runs; its successful result is kept
for :data:`RETENTION_HOURS`. A retry with the same key and the same request gets that result again
(``Idempotent-Replayed: true``) without running anything twice; the same key with another request
body is a 409, and so is a retry while the first is still running. A request that fails gives
its key back, so the client can fix and retry it. Keys belong to the API key that used them (the
operator's to the admin token).

The kept result is encrypted (AES-GCM) with a key derived from the caller's own bearer secret and
the idempotency key: a new API key's secret sits in its creation response, and the database only
ever holds ciphertext only the caller could unlock. So a result kept under a credential that has
changed since (the operator's admin token, rotated) cannot be read back: its replay is a 409
``idempotency_result_unreadable`` that says the request was done — never run again, never a 500.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

import asyncpg
import msgspec
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from litestar.params import HeaderParameter
from lorafleet.core.errors import IdempotencyConflict
from lorafleet.db import queries
from lorafleet.gateway.auth import bearer_secret
from lorafleet.gateway.context import RequestContext
from lorafleet.gateway.services import Services

T = TypeVar("T")
log = structlog.get_logger("lorafleet.idempotency")
RETENTION_HOURS = 24
REPLAY_HEADER = (b"idempotent-replayed", b"true")

# The header, documented on every route that honours it.
IdempotencyKey = Annotated[str | None, HeaderParameter(
    name="Idempotency-Key", min_length=1, max_length=255, required=False,
    description="Retry safely: a repeat with the same key and body returns the first result (24 h).")]


def fingerprint(route: str, body: object) -> bytes:
    """What must match for a replay: the route and the request, canonically encoded."""
    return hashlib.sha256(route.encode() + b"\0" + msgspec.json.encode(body)).digest()


def _cipher(secret: str, owner: str, key: str) -> AESGCM:
    return AESGCM(hmac.new(secret.encode(), f"lorafleet idempotency|{owner}|{key}".encode(), hashlib.sha256).digest())


@dataclass(frozen=True, slots=True)
class Replayed(Generic[T]):
    """The kept result of the first request with this key."""

    result: T


class Claim:
    """A key this request holds while it runs: :meth:`complete` keeps its result, :meth:`release`
    gives the key back (the request failed). Whichever comes first counts; the other does nothing."""

    def __init__(self, pool: asyncpg.Pool, owner: str, key: str, cipher: AESGCM) -> None:
        self._pool = pool
        self._owner = owner
        self._key = key
        self._cipher = cipher
        self.settled = False

    async def complete(self, result: object) -> None:
        if self.settled:
            return
        self.settled = True
        nonce = os.urandom(12)
        sealed = nonce + self._cipher.encrypt(nonce, msgspec.json.encode(result), None)
        await self._pool.execute(queries.complete_idempotency_key, self._owner, self._key, sealed)

    async def release(self) -> None:
        if self.settled:
            return
        self.settled = True
        await self._pool.execute(queries.release_idempotency_key, self._owner, self._key)


async def claim(pool: asyncpg.Pool, *, owner: str, secret: str, key: str, request_fingerprint: bytes,
                result_type: type[T]) -> Claim | Replayed[T]:
    """The key for this request (it runs now), or the first request's result (it ran already); a 409
    when the key is busy, belongs to another request, or its result cannot be read back."""
    cipher = _cipher(secret, owner, key)
    await pool.execute(queries.expire_idempotency_key, owner, key, RETENTION_HOURS)
    claimed = await pool.fetchrow(queries.claim_idempotency_key, owner, key, request_fingerprint)
    if claimed is not None:
        return Claim(pool, owner, key, cipher)
    # Someone has the key: the same request done or running, or another request.
    existing = await pool.fetchrow(queries.get_idempotency_key, owner, key)
    if existing is None:  # the first request failed and gave the key back a moment ago
        raise IdempotencyConflict("A request with this Idempotency-Key just failed; retry.",
                                  param="Idempotency-Key", code="idempotency_key_in_use")
    if existing["fingerprint"] != request_fingerprint:
        raise IdempotencyConflict("This Idempotency-Key was used with a different request; use a new key.",
                                  param="Idempotency-Key")
    if existing["status"] != "done":
        raise IdempotencyConflict("A request with this Idempotency-Key is still being processed; retry later.",
                                  param="Idempotency-Key", code="idempotency_key_in_use")
    stored: bytes = existing["response"]
    try:
        return Replayed(msgspec.json.decode(cipher.decrypt(stored[:12], stored[12:], None), type=result_type))
    except (InvalidTag, ValueError, msgspec.DecodeError):
        # Sealed under a credential that has changed since (the admin token rotated): the request did run,
        # and is not run again, but its result cannot be unlocked with the credential presented now.
        log.warning("idempotent_result_unreadable", owner=owner)
        raise IdempotencyConflict(
            "The request with this Idempotency-Key was already done, but its result was kept under the credential "
            "used then (since rotated) and cannot be returned; it was not run again. Look the result up, or use a "
            "new key to run it again.", param="Idempotency-Key", code="idempotency_result_unreadable") from None


async def run_once(pool: asyncpg.Pool, *, owner: str, secret: str, key: str | None, request_fingerprint: bytes,
                   action: Callable[[], Awaitable[T]], result_type: type[T],
                   on_replay: Callable[[], None] | None = None) -> T:
    """``action()``'s result, run at most once per (owner, key) for this request."""
    if key is None:
        return await action()
    claimed = await claim(pool, owner=owner, secret=secret, key=key, request_fingerprint=request_fingerprint,
                          result_type=result_type)
    if isinstance(claimed, Replayed):
        if on_replay is not None:
            on_replay()
        return claimed.result
    try:
        result = await action()
    except BaseException:
        await claimed.release()
        raise
    await claimed.complete(result)
    return result


async def once(context: RequestContext, services: Services, authorization: str | None, *, owner: str, key: str | None, body: object,
               action: Callable[[], Awaitable[T]], result_type: type[T]) -> T:
    """:func:`run_once` for a route: the caller's bearer secret keys the stored result, and a
    replayed answer says so in ``Idempotent-Replayed``."""
    if key is None:
        return await action()
    return await run_once(services.pool, owner=owner, secret=bearer_secret(authorization), key=key,
                          request_fingerprint=fingerprint(f"{context.method} {context.path}", body), action=action,
                          result_type=result_type, on_replay=lambda: context.response_headers.append(REPLAY_HEADER))
