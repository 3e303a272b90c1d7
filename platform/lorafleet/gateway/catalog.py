"""The base models clients can name, kept in memory."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from lorafleet.core.errors import ModelNotFound
from lorafleet.db import queries


@dataclass(frozen=True, slots=True)
class BaseModel:
    id: str
    name: str
    max_model_len: int
    created: int


class ModelCatalog:
    """Base models by public name, re-read by the worker registry's refresh loop (off the request path)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._by_name: dict[str, BaseModel] = {}

    async def refresh(self) -> None:
        rows = await self._pool.fetch(queries.list_base_models)
        self._by_name = {
            row["name"]: BaseModel(row["id"], row["name"], row["max_model_len"], int(row["created_at"].timestamp()))
            for row in rows
        }

    def all(self) -> list[BaseModel]:
        return list(self._by_name.values())

    def resolve(self, name: str) -> BaseModel:
        model = self._by_name.get(name)
        if model is None:
            raise ModelNotFound(f"The model `{name}` does not exist or you do not have access to it.", param="model")
        return model
