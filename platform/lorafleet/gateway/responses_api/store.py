"""Stored responses: the tenant's own, read back, chained from and deleted only by that tenant.

Another tenant's id is answered exactly like an id that never existed. What is stored (inputs and
outputs) is the tenant's data: it is never logged.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import msgspec
from lorafleet.core.errors import InvalidRequest, NotFound
from lorafleet.db import queries

_encode = msgspec.json.Encoder().encode
MAX_TURNS = 1000  # the longest chain replayed
# The most stored JSON a chain may replay: far more text than any served context holds, so only a
# conversation that could not run anyway is refused; bounds what one request makes the gateway load.
MAX_HISTORY_BYTES = 8 * 1024 * 1024


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
        rows = await self._pool.fetch(queries.response_chain, previous_response_id, tenant_id, MAX_TURNS,
                                      MAX_HISTORY_BYTES)
        if not rows:
            raise NotFound(f"Previous response with id '{previous_response_id[:80]}' not found.",
                           param="previous_response_id")
        oldest = rows[0]
        if oldest["bytes"] > MAX_HISTORY_BYTES or (oldest["depth"] >= MAX_TURNS and oldest["previous_response_id"]):
            raise InvalidRequest(f"the conversation up to '{previous_response_id[:80]}' is longer than can be replayed "
                                 f"({MAX_TURNS} turns or {MAX_HISTORY_BYTES // 2**20} MiB); start a new one",
                                 param="previous_response_id", code="conversation_too_long")
        if oldest["previous_response_id"] is not None:
            # A turn in the middle was deleted or expired: replaying the rest would silently change the conversation.
            raise NotFound(f"An earlier turn of this conversation ('{oldest['previous_response_id'][:80]}') was deleted "
                           "or has expired.", param="previous_response_id")
        items: list[dict[str, Any]] = []
        for row in rows:
            items += row["input"]
            items += row["output"] or []
        return items


# A JSON-escaped U+0000 ("\u0000" preceded by an even number of backslashes, i.e. not itself escaped).
_ESCAPED_NUL = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def storable(value: Any) -> Any:
    """``value`` with every U+0000 as U+FFFD: PostgreSQL's jsonb cannot hold U+0000, and a response that
    was answered must still be stored (the client sent or the model wrote that character).

    Done on the encoded JSON, not by walking the value: what msgspec decoded at any depth it encodes
    again, where a recursive walk could run out of stack on a deeply nested tool schema.
    """
    encoded = _encode(value)
    if b"\\u0000" not in encoded:
        return value
    return msgspec.json.decode(_ESCAPED_NUL.sub(rb"\1\\ufffd", encoded))


def _missing(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id[:80]}' not found.", param="response_id")
