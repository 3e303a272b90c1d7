"""What a request's ``model`` names: a base model (kept in memory) or one of the tenant's adapters."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from lorafleet.adapters.service import ADAPTER_NAME
from lorafleet.billing.pricing import PriceBook, price_from_row
from lorafleet.core.errors import ModelNotFound
from lorafleet.db import queries


@dataclass(frozen=True, slots=True)
class BaseModel:
    id: str
    name: str
    max_model_len: int
    created: int


class ModelCatalog:
    """Base models by public name and their prices, re-read by the worker registry's refresh loop (off the request path)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._by_name: dict[str, BaseModel] = {}
        self.prices = PriceBook()

    async def refresh(self) -> None:
        rows = await self._pool.fetch(queries.list_base_models)
        self._by_name = {
            row["name"]: BaseModel(row["id"], row["name"], row["max_model_len"], int(row["created_at"].timestamp()))
            for row in rows
        }
        self.prices = PriceBook([price_from_row(row) for row in await self._pool.fetch(queries.list_prices)])

    def all(self) -> list[BaseModel]:
        return list(self._by_name.values())

    def base(self, name: str) -> BaseModel:
        model = self._by_name.get(name)
        if model is None:
            raise _not_found(name)
        return model

    async def resolve(self, tenant_id: str, name: str) -> ResolvedModel:
        """A base model by name, or one of the tenant's ready adapters as ``name`` or ``base:name``.

        Another tenant's adapter is not found, exactly like one that never existed.
        """
        base = self._by_name.get(name)
        if base is not None:
            return ResolvedModel(base, None)
        base_name, separator, adapter_name = name.rpartition(":")
        if not ADAPTER_NAME.match(adapter_name):
            raise _not_found(name)  # cannot name an adapter: no need to ask the database
        row = await self._pool.fetchrow(queries.resolve_adapter_by_name, tenant_id, adapter_name)
        if row is None or (separator and row["base_model"] != base_name) or row["base_model"] not in self._by_name:
            raise _not_found(name)
        return ResolvedModel(self._by_name[row["base_model"]], row["id"])


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    base: BaseModel
    adapter_id: str | None

    @property
    def served_name(self) -> str:
        """What the worker is asked for: workers only ever see adapter ids, never tenant names."""
        return self.adapter_id or self.base.name


def _not_found(name: str) -> ModelNotFound:
    return ModelNotFound(f"The model `{name}` does not exist or you do not have access to it.", param="model")
