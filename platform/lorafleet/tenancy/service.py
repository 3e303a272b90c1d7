"""Tenant and key operations shared by the CLI and the HTTP API."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import asyncpg
import msgspec

from lorafleet.core import ids
from lorafleet.core.errors import InvalidRequest, NotFound
from lorafleet.db import queries
from lorafleet.tenancy.keys import ALL_SCOPES, display_prefix, generate_secret, hash_secret


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
    object: str = "api_key"


class CreatedApiKey(ApiKeyView, frozen=True, kw_only=True):
    secret: str  # shown once, never stored


def _key_view(row: asyncpg.Record) -> ApiKeyView:
    return ApiKeyView(**dict(row))


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
    ) -> CreatedApiKey:
        await self.get_tenant(tenant_id)
        chosen = list(dict.fromkeys(scopes)) if scopes else list(ALL_SCOPES)
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
            display_prefix(secret), mode, chosen, expires_at,
        )
        return CreatedApiKey(**dict(row), secret=secret)

    async def list_keys(self, tenant_id: str) -> list[ApiKeyView]:
        return [_key_view(row) for row in await self._db.fetch(queries.list_api_keys, tenant_id)]

    async def revoke_key(self, key_id: str, *, tenant_id: str | None = None) -> ApiKeyView:
        """Revoke a key; with ``tenant_id`` another tenant's key is reported missing, like an unknown one."""
        row = await self._db.fetchrow(queries.revoke_api_key, key_id, tenant_id)
        if row is None:
            raise NotFound(f"no API key {key_id!r}", param="key_id")
        return _key_view(row)
