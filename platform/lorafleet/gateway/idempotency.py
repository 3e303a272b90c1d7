"""``Idempotency-Key`` on every POST that creates or moves something, as Stripe does it.

The first request with a key claims it (``in_progress``) and runs; its successful result is kept
for :data:`RETENTION_HOURS`. A retry with the same key and the same request gets that result again
(``Idempotent-Replayed: true``) without running anything twice; the same key with another request
body is a 409, and so is a retry while the first is still running. A request that fails gives
its key back, so the client can fix and retry it. Keys belong to the API key that used them (the
operator's to the admin token).

The kept result is encrypted (AES-GCM) with a key derived from the caller's own bearer secret and
the idempotency key: a new API key's secret sits in its creation response, and the database only
ever holds ciphertext only the caller could unlock.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import asyncpg
import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from litestar.params import HeaderParameter
from lorafleet.core.errors import IdempotencyConflict
from lorafleet.db import queries
from lorafleet.gateway.auth import bearer_secret
from lorafleet.gateway.context import RequestContext

T = TypeVar("T")
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


async def run_once(pool: asyncpg.Pool, *, owner: str, secret: str, key: str | None, request_fingerprint: bytes,
                   action: Callable[[], Awaitable[T]], result_type: type[T],
                   on_replay: Callable[[], None] | None = None) -> T:
    """``action()``'s result, run at most once per (owner, key) for this request."""
    if key is None:
        return await action()
    cipher = _cipher(secret, owner, key)
    await pool.execute(queries.expire_idempotency_key, owner, key, RETENTION_HOURS)
    claimed = await pool.fetchrow(queries.claim_idempotency_key, owner, key, request_fingerprint)
    if claimed is None:  # someone has the key: the same request done or running, or another request
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
        if on_replay is not None:
            on_replay()
        return msgspec.json.decode(cipher.decrypt(stored[:12], stored[12:], None), type=result_type)
    try:
        result = await action()
    except BaseException:
        await pool.execute(queries.release_idempotency_key, owner, key)
        raise
    nonce = os.urandom(12)
    sealed = nonce + cipher.encrypt(nonce, msgspec.json.encode(result), None)
    await pool.execute(queries.complete_idempotency_key, owner, key, sealed)
    return result


async def once(context: RequestContext, authorization: str | None, *, owner: str, key: str | None, body: object,
               action: Callable[[], Awaitable[T]], result_type: type[T]) -> T:
    """:func:`run_once` for a route: the caller's bearer secret keys the stored result, and a
    replayed answer says so in ``Idempotent-Replayed``."""
    if key is None:
        return await action()
    return await run_once(context.services.pool, owner=owner, secret=bearer_secret(authorization), key=key,
                          request_fingerprint=fingerprint(f"{context.method} {context.path}", body), action=action,
                          result_type=result_type, on_replay=lambda: context.response_headers.append(REPLAY_HEADER))
