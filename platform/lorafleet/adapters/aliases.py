"""Aliases of an adapter name: ``name@prod`` → one version, or weighted versions (a 90/10 canary).

- Moving an alias is one UPDATE of its row (upsert_adapter_alias): a request resolves the alias once,
  before or after the move, and finishes on the version it got (gateway/fleet/catalog.py).
- Every move is kept in the alias's history; a rollback puts back the targets the alias had before its
  latest move (and is itself a move: a second rollback undoes the first).
- ``latest`` is the alias the bare name follows; without it the bare name means the highest version.
- A version is ``v<n>`` and never an alias name, so ``name@v2`` and ``name@prod`` cannot be confused.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import random
import re
from typing import Annotated

import asyncpg
import msgspec
from lorafleet.core.errors import InvalidRequest, NotFound
from lorafleet.db import queries
from msgspec import Meta

ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
ALIAS = re.compile(ALIAS_PATTERN)
VERSION = re.compile(r"^v([1-9][0-9]{0,8})$")  # `v2`: a version, never an alias
LATEST = "latest"
MAX_TARGETS = 10
MAX_WEIGHT = 10_000
HISTORY_SHOWN = 20


class AliasVersion(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    version: Annotated[int, Meta(ge=1, le=999_999_999)]
    weight: Annotated[int, Meta(ge=1, le=MAX_WEIGHT)] = 100


class AliasSet(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """``PUT /v1/adapters/{name}/aliases/{alias}``: where the alias sends requests, by weight."""

    versions: Annotated[list[AliasVersion], Meta(min_length=1, max_length=MAX_TARGETS)]


class AliasTarget(msgspec.Struct, kw_only=True, frozen=True):
    version: int
    weight: int
    adapter_id: str


class AliasMove(msgspec.Struct, kw_only=True, frozen=True):
    action: str  # set, rollback or delete
    targets: list[AliasTarget] | None
    created_at: dt.datetime


class AliasView(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    alias: str
    model: str  # what a request's `model` says to use it
    targets: list[AliasTarget]
    updated_at: dt.datetime
    history: list[AliasMove] | None = None  # newest first; in the single alias's view only
    object: str = "adapter.alias"


def alias_name_problem(alias: str) -> str | None:
    if VERSION.match(alias):
        return f"{alias!r} names a version; an alias may not look like one (v<number>)"
    if not ALIAS.match(alias):
        return f"invalid alias {alias[:64]!r}: 1-32 characters, lowercase letters, digits, '_' or '-', starting with a letter"
    return None


def _targets(raw: object) -> list[AliasTarget]:
    return msgspec.convert(raw, list[AliasTarget])


def _view(row: asyncpg.Record, history: list[AliasMove] | None = None) -> AliasView:
    return AliasView(name=row["name"], alias=row["alias"], model=f"{row['name']}@{row['alias']}",
                     targets=_targets(row["targets"]), updated_at=row["updated_at"], history=history)


def choose(weights: list[int], sticky_key: str | None, salt: str) -> int:
    """The index of the target a request goes to: by weight; with a sticky key, always the same one for
    that key while the weights stay (sha256, not hash(): every gateway replica must agree).

    Buckets follow the targets' order (by version), so moving weight from one version to the next moves
    only the callers whose bucket changes sides."""
    total = sum(weights)
    if sticky_key is None:
        point = random.randrange(total)
    else:
        digest = hashlib.sha256(f"{salt}\x00{sticky_key}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") % total
    for index, weight in enumerate(weights):
        if point < weight:
            return index
        point -= weight
    return len(weights) - 1


class AliasService:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @staticmethod
    def _check_alias(alias: str) -> None:
        problem = alias_name_problem(alias)
        if problem:
            raise InvalidRequest(problem, param="alias")

    async def list(self, tenant_id: str, name: str) -> list[AliasView]:
        rows = await self._pool.fetch(queries.list_adapter_aliases, tenant_id, name)
        if not rows and not await self._pool.fetch(queries.adapter_versions, tenant_id, name):
            raise _no_adapter(name)
        return [_view(row) for row in rows]

    async def list_all(self, tenant_id: str) -> builtins.list[AliasView]:
        return [_view(row) for row in await self._pool.fetch(queries.list_tenant_aliases, tenant_id)]

    async def get(self, tenant_id: str, name: str, alias: str) -> AliasView:
        self._check_alias(alias)
        row = await self._pool.fetchrow(queries.get_adapter_alias, tenant_id, name, alias)
        if row is None:
            raise _no_alias(name, alias)
        history = await self._pool.fetch(queries.alias_history, tenant_id, name, alias, HISTORY_SHOWN)
        return _view(row, [AliasMove(action=move["action"], created_at=move["created_at"],
                                     targets=_targets(move["targets"]) if move["targets"] is not None else None)
                           for move in history])

    async def set(self, tenant_id: str, name: str, alias: str, body: AliasSet, *, key_id: str | None) -> AliasView:
        self._check_alias(alias)
        seen = [entry.version for entry in body.versions]
        if len(set(seen)) != len(seen):
            raise InvalidRequest("each version may appear once in versions", param="versions")
        versions = {row["version"]: row for row in await self._pool.fetch(queries.adapter_versions, tenant_id, name)}
        if not versions:
            raise _no_adapter(name)
        bases = set()
        targets = []
        for entry in sorted(body.versions, key=lambda entry: entry.version):
            row = versions.get(entry.version)
            if row is None:
                raise InvalidRequest(f"{name!r} has no version {entry.version} (it has "
                                     f"{', '.join(f'v{v}' for v in versions)})",
                                     param=f"versions[{seen.index(entry.version)}].version", code="version_not_found")
            bases.add(row["base_model"])
            targets.append(AliasTarget(version=entry.version, weight=entry.weight, adapter_id=row["id"]))
        if len(bases) > 1:  # one request, one base model: its limits and prices must not depend on the draw
            raise InvalidRequest("an alias's versions must share one base model", param="versions")
        return await self._move(tenant_id, name, alias, targets, "set", key_id)

    async def _move(self, tenant_id: str, name: str, alias: str, targets: builtins.list[AliasTarget] | None, action: str,
                    key_id: str | None, connection: asyncpg.Connection | None = None) -> AliasView:
        if connection is None:
            async with self._pool.acquire() as connection, connection.transaction():
                await connection.execute(queries.lock_adapter_alias, tenant_id, name, alias)
                return await self._move(tenant_id, name, alias, targets, action, key_id, connection)
        raw = msgspec.to_builtins(targets) if targets is not None else None
        if targets is None:
            row = await connection.fetchrow(queries.delete_adapter_alias, tenant_id, name, alias)
            if row is None:
                raise _no_alias(name, alias)
        else:
            row = await connection.fetchrow(queries.upsert_adapter_alias, tenant_id, name, alias, raw)
        await connection.execute(queries.insert_alias_history, tenant_id, name, alias, raw, action, key_id)
        return _view(row)

    async def delete(self, tenant_id: str, name: str, alias: str, *, key_id: str | None) -> AliasView:
        self._check_alias(alias)
        return await self._move(tenant_id, name, alias, None, "delete", key_id)

    async def rollback(self, tenant_id: str, name: str, alias: str, *, key_id: str | None) -> AliasView:
        """The targets the alias had before its latest move (a deleted alias comes back as it was)."""
        self._check_alias(alias)
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(queries.lock_adapter_alias, tenant_id, name, alias)
            moves = await connection.fetch(queries.alias_history, tenant_id, name, alias, 2)
            if not moves:
                raise _no_alias(name, alias)
            if len(moves) < 2 or moves[1]["targets"] is None:
                raise InvalidRequest(f"{name}@{alias} has no earlier target to roll back to", param="alias",
                                     code="nothing_to_roll_back")
            previous = _targets(moves[1]["targets"])
            live = {row["id"] for row in await connection.fetch(queries.adapter_versions, tenant_id, name)}
            gone = [f"v{target.version}" for target in previous if target.adapter_id not in live]
            if gone:
                raise InvalidRequest(f"{name}@{alias} was on {', '.join(gone)}, since deleted: set it instead",
                                     param="alias", code="nothing_to_roll_back")
            return await self._move(tenant_id, name, alias, previous, "rollback", key_id, connection)


def _no_adapter(name: str) -> NotFound:
    return NotFound(f"no adapter named {name[:64]!r}", param="adapter_name")


def _no_alias(name: str, alias: str) -> NotFound:
    return NotFound(f"no alias {alias[:64]!r} of adapter {name[:64]!r}", param="alias")
