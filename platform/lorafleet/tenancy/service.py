"""Tenant and key operations shared by the CLI and the HTTP API."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import msgspec
from lorafleet.core import ids
from lorafleet.core.errors import InvalidRequest, NotFound, PermissionDenied
from lorafleet.core.types import Page, page_of
from lorafleet.db import queries
from lorafleet.tenancy.keys import (
    ALL_SCOPES,
    display_prefix,
    generate_secret,
    hash_secret,
)


class Tenant(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    created_at: dt.datetime
    object: str = "tenant"


class ApiKeyView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant_id: str
    name: str
    display_prefix: str
    mode: str
    scopes: list[str]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    parent_key_id: str | None = None  # the key that created this one (None: the operator or a sign-in link)
    object: str = "api_key"


class CreatedApiKey(ApiKeyView, frozen=True, kw_only=True):
    secret: str  # shown once, never stored


def _key_view(row: asyncpg.Record) -> ApiKeyView:
    return ApiKeyView(**dict(row))


@dataclass(frozen=True, slots=True)
class KeyAuthority:
    """What the key acting on other keys may hand out: a child never outranks or outlives it."""

    key_id: str | None            # recorded as the child's parent (None: a sign-in link's session)
    scopes: frozenset[str]
    expires_at: dt.datetime | None

    def grant_scopes(self, requested: Sequence[str] | None) -> list[str]:
        if requested is None:
            return [scope for scope in ALL_SCOPES if scope in self.scopes]
        missing = sorted(set(requested) - self.scopes)
        if missing:
            raise InvalidRequest(f"a key can only grant scopes it has itself; this one lacks {', '.join(missing)}",
                                 param="scopes")
        return list(requested)

    def grant_expiry(self, requested: dt.datetime | None) -> dt.datetime | None:
        if self.expires_at is None:
            return requested
        if requested is None:
            return self.expires_at  # inherited: a key expiring in an hour cannot mint one that never does
        if requested > self.expires_at:
            raise InvalidRequest(f"expires_at must not be later than this key's own expiry "
                                 f"({self.expires_at.isoformat()})", param="expires_at")
        return requested

    def may_revoke(self, target: ApiKeyView) -> None:
        missing = sorted(set(target.scopes) - self.scopes)
        if missing:
            raise PermissionDenied(f"this key cannot revoke a key with scopes it does not hold ({', '.join(missing)})",
                                   code="insufficient_permissions")


class TenancyService:
    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = connection

    async def create_tenant(self, name: str) -> Tenant:
        name = name.strip()
        if not 1 <= len(name) <= 200:
            raise InvalidRequest("tenant name must be 1 to 200 characters", param="name")
        row = await self._db.fetchrow(queries.insert_tenant, ids.tenant_id(), name)
        return Tenant(**dict(row))

    async def get_tenant(self, tenant_id: str) -> Tenant:
        row = await self._db.fetchrow(queries.get_tenant, tenant_id)
        if row is None:
            raise NotFound(f"no tenant {tenant_id!r}", param="tenant")
        return Tenant(**dict(row))

    async def all_tenants(self) -> list[Tenant]:
        """Every tenant, oldest first."""
        return [Tenant(**dict(row)) for row in await self._db.fetch(queries.list_tenants)]

    async def find_tenant_by_name(self, name: str) -> Tenant | None:
        row = await self._db.fetchrow(queries.find_tenant_by_name, name)
        return Tenant(**dict(row)) if row else None

    async def create_key(
        self,
        tenant_id: str,
        *,
        name: str = "",
        scopes: Sequence[str] | None = None,
        mode: str = "live",
        expires_at: dt.datetime | None = None,
        authority: KeyAuthority | None = None,
    ) -> CreatedApiKey:
        """A new key; with ``authority`` (the creating key's bounds) its scopes and expiry stay within them."""
        await self.get_tenant(tenant_id)
        if expires_at is not None and expires_at.tzinfo is None:
            raise InvalidRequest("expires_at needs a timezone (e.g. 2027-01-01T00:00:00Z)", param="expires_at")
        if expires_at is not None and expires_at <= dt.datetime.now(dt.UTC):
            raise InvalidRequest("expires_at must be in the future", param="expires_at")
        requested = list(dict.fromkeys(scopes)) if scopes else None
        if authority is not None:
            requested = authority.grant_scopes(requested)
            expires_at = authority.grant_expiry(expires_at)
        chosen = requested or list(ALL_SCOPES)
        unknown = sorted(set(chosen) - set(ALL_SCOPES))
        if unknown:
            raise InvalidRequest(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(ALL_SCOPES)}", param="scopes")
        if mode not in ("live", "test"):
            raise InvalidRequest("mode must be 'live' or 'test'", param="mode")
        if len(name) > 200:
            raise InvalidRequest("key name must be at most 200 characters", param="name")
        secret = generate_secret(mode)
        row = await self._db.fetchrow(
            queries.insert_api_key, ids.key_id(), tenant_id, name, hash_secret(secret),
            display_prefix(secret), mode, chosen, expires_at, authority.key_id if authority else None,
        )
        return CreatedApiKey(**dict(row), secret=secret)

    async def list_keys(self, tenant_id: str, *, after: str | None = None, limit: int = 100) -> Page[ApiKeyView]:
        """One page of the tenant's keys, oldest first (``after``: the last id of the previous page)."""
        rows = await self._db.fetch(queries.list_api_keys, tenant_id, after, limit + 1)
        return page_of([_key_view(row) for row in rows], limit)

    async def all_keys(self, tenant_id: str) -> list[ApiKeyView]:
        keys: list[ApiKeyView] = []
        after: str | None = None
        while True:
            page = await self.list_keys(tenant_id, after=after, limit=1000)
            keys += page.data
            if not page.has_more:
                return keys
            after = page.data[-1].id

    async def revoke_key(self, key_id: str, *, tenant_id: str | None = None,
                         authority: KeyAuthority | None = None) -> ApiKeyView:
        """Revoke a key; with ``tenant_id`` another tenant's key is reported missing, like an unknown one.

        With ``authority`` (the revoking key's bounds) a key with scopes it does not hold is refused.
        """
        if authority is not None:
            found = await self._db.fetchrow(queries.get_api_key, key_id, tenant_id)
            if found is None:
                raise NotFound(f"no API key {key_id!r}", param="key_id")
            authority.may_revoke(_key_view(found))
        row = await self._db.fetchrow(queries.revoke_api_key, key_id, tenant_id)
        if row is None:
            raise NotFound(f"no API key {key_id!r}", param="key_id")
        return _key_view(row)
