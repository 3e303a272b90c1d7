"""Stored responses: the tenant's own, read back, chained from and deleted only by that tenant.

Another tenant's id is answered exactly like an id that never existed. What is stored (inputs and
outputs) is the tenant's data: it is never logged.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from lorafleet.core.errors import NotFound
from lorafleet.db import queries

MAX_TURNS = 1000  # the longest chain replayed; a longer conversation is refused by the context length anyway


class ResponseStore:
    def __init__(self, pool: asyncpg.Pool, retention_days: int) -> None:
        self._pool = pool
        self._retention_days = retention_days

    async def save(self, tenant_id: str, key_id: str, input_items: list[dict[str, Any]], document: dict[str, Any]) -> None:
        await self._pool.execute(queries.insert_response, document["id"], tenant_id, key_id,
                                 document.get("previous_response_id"), storable(input_items), storable(document),
                                 self._retention_days)

    async def get(self, tenant_id: str, response_id: str) -> dict[str, Any]:
        document = await self._pool.fetchval(queries.get_response, response_id, tenant_id)
        if document is None:
            raise _missing(response_id)
        return document

    async def input_items(self, tenant_id: str, response_id: str) -> list[dict[str, Any]]:
        items = await self._pool.fetchval(queries.get_response_input, response_id, tenant_id)
        if items is None:
            raise _missing(response_id)
        return items

    async def delete(self, tenant_id: str, response_id: str) -> None:
        if await self._pool.fetchval(queries.delete_response, response_id, tenant_id) is None:
            raise _missing(response_id)

    async def history(self, tenant_id: str, previous_response_id: str) -> list[dict[str, Any]]:
        """The conversation up to that response: each turn's input items, then its output."""
        rows = await self._pool.fetch(queries.response_chain, previous_response_id, tenant_id, MAX_TURNS)
        if not rows:
            raise NotFound(f"Previous response with id '{previous_response_id}' not found.",
                           param="previous_response_id")
        items: list[dict[str, Any]] = []
        for row in rows:
            items += row["input"]
            items += row["output"] or []
        return items


def storable(value: Any) -> Any:
    """``value`` with every U+0000 as U+FFFD: PostgreSQL's jsonb cannot hold U+0000, and a response that
    was answered must still be stored (the client sent or the model wrote that character)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [storable(item) for item in value]
    return value


def _missing(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id[:80]}' not found.", param="response_id")
