"""What a request's ``model`` names: a base model, or one of the caller's adapters; and their prices.

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

import asyncpg
import structlog
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
class ResolvedModel:
    base: BaseModel
    adapter_id: str | None

    @property
    def served_name(self) -> str:
        """What the worker is asked for: workers only ever see adapter ids, never tenant names."""
        return self.adapter_id or self.base.name


class ModelCatalog:
    def __init__(self, pool: asyncpg.Pool, refresh_seconds: float = 1.0) -> None:
        self._pool = pool
        self._refresh_seconds = refresh_seconds
        self._by_name: dict[str, BaseModel] = {}
        self._adapters: OrderedDict[tuple[str, str], tuple[float, tuple[str, str] | None]] = OrderedDict()
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
        """This gateway deleted it: stop resolving it here at once."""
        self._adapters.pop((tenant_id, name), None)
        if fine_tuned_model:
            self._adapters.pop((tenant_id, fine_tuned_model), None)

    async def resolve(self, tenant_id: str, name: str) -> ResolvedModel:
        """A base model by name, or one of the tenant's ready adapters as ``name`` or ``base:name``.

        Another tenant's adapter is not found, exactly like one that never existed.
        """
        base = self._by_name.get(name)
        if base is not None:
            return ResolvedModel(base, None)
        if name.startswith(FINE_TUNED_PREFIX):  # ft:<base>:<suffix>:<job id>, a fine-tuning job's result
            found = await self._adapter(tenant_id, name)
            if found is None or found[1] not in self._by_name:
                raise not_found(name)
            return ResolvedModel(self._by_name[found[1]], found[0])
        base_name, separator, adapter_name = name.rpartition(":")
        if not ADAPTER_NAME.match(adapter_name):
            raise not_found(name)  # cannot name an adapter: no need to ask the database
        found = await self._adapter(tenant_id, adapter_name)
        if found is None or (separator and found[1] != base_name) or found[1] not in self._by_name:
            raise not_found(name)
        return ResolvedModel(self._by_name[found[1]], found[0])

    async def _adapter(self, tenant_id: str, name: str) -> tuple[str, str] | None:
        """(adapter id, base model name) of the tenant's ready adapter ``name``, briefly cached."""
        key = (tenant_id, name)
        cached = self._adapters.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        query = queries.resolve_fine_tuned_model if name.startswith(FINE_TUNED_PREFIX) else queries.resolve_adapter_by_name
        row = await self._pool.fetchrow(query, tenant_id, name)
        found = (row["id"], row["base_model"]) if row else None
        self._adapters[key] = (now + ADAPTER_CACHE_SECONDS, found)
        self._adapters.move_to_end(key)
        while len(self._adapters) > ADAPTER_CACHE_ENTRIES:
            self._adapters.popitem(last=False)
        return found


def not_found(name: str) -> ModelNotFound:
    return ModelNotFound(f"The model `{name[:300]}` does not exist or you do not have access to it.", param="model")


_ROUTES_FOR_TASK = {"generate": "/v1/chat/completions, /v1/completions or /v1/responses", "embed": "/v1/embeddings"}


def require_task(resolved: ResolvedModel, task: str, public_model: str) -> None:
    """A 400 when the model is served for another kind of request (an embedding model asked to chat)."""
    if resolved.base.task != task:
        raise InvalidRequest(f"'{public_model[:256]}' is served for {_ROUTES_FOR_TASK[resolved.base.task]}, "
                             "not this route", param="model", code="unsupported_model")
