"""The long-lived resources of one gateway process, opened in the app's lifespan."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiohttp
import asyncpg

from lorafleet.core.errors import ModelNotFound
from lorafleet.core.settings import Settings
from lorafleet.db import queries
from lorafleet.gateway.auth import KeyAuthenticator
from lorafleet.gateway.ledger import LedgerWriter
from lorafleet.gateway.metrics import GatewayMetrics
from lorafleet.gateway.openai.relay import Relay
from lorafleet.gateway.routing import WorkerRegistry


@dataclass(frozen=True, slots=True)
class BaseModel:
    id: str
    name: str
    max_model_len: int
    created: int


@dataclass
class ModelCatalog:
    """Base models by public name, re-read from the database at most once a second."""

    pool: asyncpg.Pool
    _by_name: dict[str, BaseModel] = field(default_factory=dict)
    _loaded_at: float = float("-inf")

    async def all(self) -> list[BaseModel]:
        if time.monotonic() - self._loaded_at > 1.0:
            rows = await self.pool.fetch(queries.list_base_models)
            self._by_name = {
                row["name"]: BaseModel(row["id"], row["name"], row["max_model_len"], int(row["created_at"].timestamp()))
                for row in rows
            }
            self._loaded_at = time.monotonic()
        return list(self._by_name.values())

    async def resolve(self, name: str) -> BaseModel:
        await self.all()
        model = self._by_name.get(name)
        if model is None:
            raise ModelNotFound(f"The model `{name}` does not exist or you do not have access to it.", param="model")
        return model


@dataclass
class Services:
    settings: Settings
    pool: asyncpg.Pool
    http: aiohttp.ClientSession
    metrics: GatewayMetrics
    auth: KeyAuthenticator
    catalog: ModelCatalog
    registry: WorkerRegistry
    ledger: LedgerWriter
    relay: Relay
