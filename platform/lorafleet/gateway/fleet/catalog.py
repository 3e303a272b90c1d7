"""What a request's ``model`` names: a base model, or one of the caller's adapters; and their prices.

An adapter is named ``name`` (the ``latest`` alias if the tenant set one, else the highest version),
``name@v<n>`` (exactly that version) or ``name@<alias>`` (one version or weighted versions; a sticky key
keeps one caller on one of them), each optionally after ``<base>:``. The choice among an alias's
versions is made here, once per request: retries and failover reuse it, so a request that started on a
version finishes on it however the alias moves meanwhile.

Base models and price versions are few: the catalog keeps them in memory and re-reads them on its
own loop every ``refresh_seconds`` (a new price applies within that). An adapter name is looked
up in the database and the answer kept for :data:`ADAPTER_CACHE_SECONDS`; that is safe because
the worker is the final authority — it resolves an ``adp_`` id against the database on every
cold load, and a deleted adapter is unloaded from every worker at once, so a request routed in
that second gets the same 404 as one that never existed.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from lorafleet.adapters.aliases import ALIAS, LATEST, VERSION, choose
from lorafleet.adapters.service import ADAPTER_NAME
from lorafleet.billing.pricing import PriceBook, price_from_row
from lorafleet.core.errors import InvalidRequest, ModelNotFound
from lorafleet.core.tasks import stop_task
from lorafleet.db import queries

log = structlog.get_logger("lorafleet.catalog")

ADAPTER_CACHE_SECONDS = 1.0
FINE_TUNED_PREFIX = "ft:"  # never an adapter's own name (names have no ':'), nor a base model's here
ADAPTER_CACHE_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class BaseModel:
    id: str
    name: str
    max_model_len: int
    created: int
    task: str = "generate"  # what its workers serve: "generate" (chat, completions, responses) or "embed"
    vocab_size: int | None = None   # from its workers' config.json (None: a worker that did not say)
    hidden_size: int | None = None  # an embedding model's dimensions


@dataclass(frozen=True, slots=True)
class Target:
    """One adapter version a name can resolve to, with its share of an alias's traffic."""

    adapter_id: str
    base_model: str
    version: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    base: BaseModel
    adapter_id: str | None
    version: int | None = None  # the adapter version chosen (None: the base model)

    @property
    def served_name(self) -> str:
        """What the worker is asked for: workers only ever see adapter ids, never tenant names."""
        return self.adapter_id or self.base.name


class ModelCatalog:
    def __init__(self, pool: asyncpg.Pool, refresh_seconds: float = 1.0) -> None:
        self._pool = pool
        self._refresh_seconds = refresh_seconds
        self._by_name: dict[str, BaseModel] = {}
        # (tenant, adapter name) → selector ("" for the bare name, "v2", "prod", an ft: name) → (expiry, targets)
        self._adapters: OrderedDict[tuple[str, str], dict[str, tuple[float, tuple[Target, ...]]]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self.prices = PriceBook()

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="model-catalog")

    async def close(self) -> None:
        await stop_task(self._task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep the last known catalog; the next tick retries
                log.warning("catalog_refresh_failed", error=repr(exc)[:300])

    async def refresh(self) -> None:
        rows = await self._pool.fetch(queries.list_base_models)
        self._by_name = {
            row["name"]: BaseModel(row["id"], row["name"], row["max_model_len"], int(row["created_at"].timestamp()),
                                   row["task"], row["vocab_size"], row["hidden_size"])
            for row in rows
        }
        self.prices = PriceBook([price_from_row(row) for row in await self._pool.fetch(queries.list_prices)])

    def all(self) -> list[BaseModel]:
        return list(self._by_name.values())

    def base(self, name: str) -> BaseModel:
        model = self._by_name.get(name)
        if model is None:
            raise not_found(name)
        return model

    def forget_adapter(self, tenant_id: str, name: str, fine_tuned_model: str | None = None) -> None:
        """This gateway changed it (a new version, a deletion, an alias moved): stop using what it cached."""
        self._adapters.pop((tenant_id, name), None)
        if fine_tuned_model:
            self._adapters.pop((tenant_id, fine_tuned_model), None)

    async def resolve(self, tenant_id: str, name: str, sticky_key: str | None = None) -> ResolvedModel:
        """A base model by name, or one of the tenant's ready adapter versions: ``[base:]name[@v<n>|@alias]``.

        Another tenant's adapter is not found, exactly like one that never existed. An alias over several
        versions draws one by weight, or by ``sticky_key`` (the same key, the same version).
        """
        base = self._by_name.get(name)
        if base is not None:
            return ResolvedModel(base, None)
        if name.startswith(FINE_TUNED_PREFIX):  # ft:<base>:<suffix>:<job id>, a fine-tuning job's result
            targets = await self._targets(tenant_id, name, name)
            base_name, separator, salt = "", "", name
        else:
            base_name, separator, qualified = name.rpartition(":")
            adapter_name, at, selector = qualified.partition("@")
            if not ADAPTER_NAME.match(adapter_name) or (at and not (VERSION.match(selector) or ALIAS.match(selector))):
                raise not_found(name)  # cannot name an adapter: no need to ask the database
            targets = await self._targets(tenant_id, adapter_name, selector)
            salt = f"{adapter_name}@{selector or LATEST}"  # one caller, one version, however the base is spelled
        if not targets:
            raise not_found(name)
        target = targets[0]
        if len(targets) > 1:
            target = targets[choose([t.weight for t in targets], sticky_key, f"{tenant_id}\x00{salt}")]
        if (separator and target.base_model != base_name) or target.base_model not in self._by_name:
            raise not_found(name)
        return ResolvedModel(self._by_name[target.base_model], target.adapter_id, target.version)

    async def _targets(self, tenant_id: str, name: str, selector: str) -> tuple[Target, ...]:
        """The ready versions ``name@selector`` resolves to, briefly cached."""
        key = (tenant_id, name)
        entry = self._adapters.get(key)
        now = time.monotonic()
        if entry is not None and (cached := entry.get(selector)) is not None and cached[0] > now:
            return cached[1]
        targets = await self._read_targets(tenant_id, name, selector)
        if entry is None:
            entry = self._adapters[key] = {}
        entry[selector] = (now + ADAPTER_CACHE_SECONDS, targets)
        self._adapters.move_to_end(key)
        while len(self._adapters) > ADAPTER_CACHE_ENTRIES:
            self._adapters.popitem(last=False)
        return targets

    async def _read_targets(self, tenant_id: str, name: str, selector: str) -> tuple[Target, ...]:
        if name.startswith(FINE_TUNED_PREFIX):
            row = await self._pool.fetchrow(queries.resolve_fine_tuned_target, tenant_id, name)
            return (Target(row["id"], row["base_model"], row["version"]),) if row else ()
        if version := VERSION.match(selector):
            row = await self._pool.fetchrow(queries.resolve_adapter_version, tenant_id, name, int(version.group(1)))
            return (Target(row["id"], row["base_model"], row["version"]),) if row else ()
        rows = await self._pool.fetch(queries.resolve_adapter_alias, tenant_id, name, selector or LATEST)
        if rows:
            return tuple(Target(row["id"], row["base_model"], row["version"], row["weight"]) for row in rows)
        if selector and selector != LATEST:
            return ()
        # No `latest` alias: the bare name (and name@latest) is the highest ready version.
        row = await self._pool.fetchrow(queries.resolve_adapter_by_name, tenant_id, name)
        return (Target(row["id"], row["base_model"], row["version"]),) if row else ()


STICKY_HEADER = "X-LoraFleet-Sticky-Key"


def version_headers(resolved: ResolvedModel) -> list[tuple[bytes, bytes]]:
    """Which adapter version answers (a canary's caller can tell): its id and its version number."""
    if resolved.adapter_id is None:
        return []
    return [(b"x-lorafleet-adapter-id", resolved.adapter_id.encode()),
            (b"x-lorafleet-adapter-version", str(resolved.version).encode())]


def sticky_key(request: Any, user: str | None) -> str | None:
    """What keeps one caller on one version of a split alias: the request's ``user``, else the header."""
    return user or request.headers.get(STICKY_HEADER) or None


def not_found(name: str) -> ModelNotFound:
    return ModelNotFound(f"The model `{name[:300]}` does not exist or you do not have access to it.", param="model")


_ROUTES_FOR_TASK = {"generate": "/v1/chat/completions, /v1/completions or /v1/responses", "embed": "/v1/embeddings"}


def require_task(resolved: ResolvedModel, task: str, public_model: str) -> None:
    """A 400 when the model is served for another kind of request (an embedding model asked to chat)."""
    if resolved.base.task != task:
        raise InvalidRequest(f"'{public_model[:256]}' is served for {_ROUTES_FOR_TASK[resolved.base.task]}, "
                             "not this route", param="model", code="unsupported_model")
