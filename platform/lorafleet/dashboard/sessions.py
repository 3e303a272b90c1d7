"""Dashboard sessions: an HttpOnly cookie holding a random token; the database keeps its sha256.

Signing in takes an API key with the ``dashboard`` scope, a one-time login link (``lorafleet
dashboard link``), or, for the operator view, the admin token. Each session has its own CSRF
token, required on every form and upload. A session signed in with a key can do exactly what that
key can (its scopes), creates keys only within the key's scopes and expiry, and ends when the key
is revoked or expires. A sign-in link is the operator's grant of the whole tenant: all scopes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import asyncpg
from lorafleet.core.errors import PermissionDenied
from lorafleet.db import queries
from lorafleet.tenancy.keys import ALL_SCOPES
from lorafleet.tenancy.service import KeyAuthority

COOKIE = "lf_session"
SESSION_SECONDS = 12 * 3600
LINK_SECONDS = 15 * 60


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class DashboardSession:
    token_hash: bytes
    tenant_id: str | None      # None: the operator
    tenant_name: str | None
    key_id: str | None
    csrf_token: str
    authority: KeyAuthority    # scopes and expiry of the key that signed in (a link: all scopes, no expiry)

    @property
    def operator(self) -> bool:
        return self.tenant_id is None

    @property
    def scopes(self) -> frozenset[str]:
        return self.authority.scopes

    def can(self, scope: str) -> bool:
        return scope in self.authority.scopes

    def require(self, scope: str) -> None:
        if scope not in self.authority.scopes:
            raise PermissionDenied(f"The key you signed in with lacks the {scope!r} scope.")

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(presented.encode(), self.csrf_token.encode())


async def open_session(pool: asyncpg.Pool, tenant_id: str | None, key_id: str | None) -> str:
    """A new session; returns the cookie value (shown to nobody else, stored only as a hash)."""
    token = secrets.token_urlsafe(32)
    await pool.execute(queries.delete_expired_dashboard_sessions)
    await pool.execute(queries.insert_dashboard_session, _hash(token), tenant_id, key_id, secrets.token_urlsafe(32),
                       SESSION_SECONDS)
    return token


async def find_session(pool: asyncpg.Pool, token: str | None) -> DashboardSession | None:
    if not token or len(token) > 100:
        return None
    digest = _hash(token)
    row = await pool.fetchrow(queries.get_dashboard_session, digest)
    if row is None:
        return None
    if row["key_id"] is not None:
        authority = KeyAuthority(row["key_id"], frozenset(row["key_scopes"]), row["key_expires_at"])
    else:
        authority = KeyAuthority(None, frozenset(ALL_SCOPES), None)
    return DashboardSession(digest, row["tenant_id"], row["tenant_name"], row["key_id"], row["csrf_token"], authority)


async def close_session(pool: asyncpg.Pool, session: DashboardSession) -> None:
    await pool.execute(queries.delete_dashboard_session, session.token_hash)


async def create_login_link(pool: asyncpg.Pool | asyncpg.Connection, tenant_id: str) -> str:
    token = secrets.token_urlsafe(32)
    await pool.execute(queries.insert_login_link, _hash(token), tenant_id, LINK_SECONDS)
    return token


async def use_login_link(pool: asyncpg.Pool, token: str) -> str | None:
    """The link's tenant, the first time it is used within its lifetime; otherwise None."""
    if not token or len(token) > 100:
        return None
    return await pool.fetchval(queries.use_login_link, _hash(token))
