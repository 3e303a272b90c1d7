"""Stored responses: the tenant's own, read back, chained from and deleted only by that tenant.

Another tenant's id is answered exactly like an id that never existed. What is stored (inputs and
outputs) is the tenant's data: it is never logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from lorafleet.core.errors import InvalidRequest, NotFound
from lorafleet.db import queries
from lorafleet.gateway.responses_api.items import chat_messages
from lorafleet.tenancy.storage import TenantStorage

_encode = msgspec.json.Encoder().encode
MAX_TURNS = 1000  # the longest chain replayed
# The most stored JSON a chain may replay: far more text than any served context holds, so only a
# conversation that could not run anyway is refused; bounds what one request makes the gateway load.
MAX_HISTORY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The turn a request continues, known from its row alone (no stored JSON read)."""

    response_id: str
    turns: int | None        # of the conversation up to and including it; None: stored before this was counted
    history_bytes: int | None  # what replaying it renders and loads, at most (bytes of JSON)


class ResponseStore:
    def __init__(self, pool: asyncpg.Pool, retention_days: int, storage: TenantStorage) -> None:
        self._pool = pool
        self._retention_days = retention_days
        self.storage = storage

    async def save(self, tenant_id: str, key_id: str, input_items: list[dict[str, Any]], document: dict[str, Any],
                   chain: ChainHead | None = None) -> bool:
        """Store an answered response; False when it does not fit (one document's cap, the tenant's quota)."""
        rest = storable({name: value for name, value in document.items() if name != "output"})
        stored_input, output = storable(input_items), storable(document.get("output") or [])
        stored_bytes = len(_encode(stored_input)) + len(_encode(rest)) + len(_encode(output))
        turn = turn_bytes(stored_input, output)
        turns = history = None
        if chain is None:
            turns, history = 1, turn
        elif chain.turns is not None and chain.history_bytes is not None:
            turns, history = chain.turns + 1, chain.history_bytes + turn
        async with self._pool.acquire() as connection, connection.transaction():
            if not await self.storage.charge(connection, tenant_id, stored_bytes):
                return False
            await connection.execute(queries.insert_response, document["id"], tenant_id, key_id,
                                     document.get("previous_response_id"), stored_input, rest, output, stored_bytes,
                                     turn, turns, history, self._retention_days)
        return True

    async def check_room(self, tenant_id: str, input_items: list[dict[str, Any]], request_document: dict[str, Any]
                         ) -> None:
        """Before a storing request runs: what it stores without its output fits one document, and the
        tenant has room left (400 / 409 otherwise)."""
        size = len(_encode(input_items)) + len(_encode(request_document))
        await self.storage.check_room(tenant_id, size, param="store")

    async def get(self, tenant_id: str, response_id: str) -> bytes:
        """The stored Response object, as JSON."""
        document = await self._pool.fetchval(queries.get_response, response_id, tenant_id)
        if document is None:
            raise _missing(response_id)
        return document.encode()

    async def input_items(self, tenant_id: str, response_id: str, *, after: str | None, newest_first: bool,
                          limit: int) -> tuple[list[dict[str, Any]], bool]:
        """One page of the input items (cut in the database) and whether more follow."""
        rows = await self._pool.fetch(queries.response_input_page, response_id, tenant_id, after, newest_first, limit + 1)
        if not rows:
            raise _missing(response_id)
        items = rows[0][0]
        return items[:limit], len(items) > limit

    async def delete(self, tenant_id: str, response_id: str) -> None:
        if await self._pool.fetchval(queries.delete_response, response_id, tenant_id) is None:
            raise _missing(response_id)

    async def head(self, tenant_id: str, previous_response_id: str) -> ChainHead:
        """The turn a request continues (404 when it is not this tenant's), refused when the conversation
        is already longer than can be replayed — before admission, without reading any stored JSON."""
        row = await self._pool.fetchrow(queries.response_chain_head, previous_response_id, tenant_id)
        if row is None:
            raise NotFound(f"Previous response with id '{previous_response_id[:80]}' not found.",
                           param="previous_response_id")
        turns, history = row["chain_turns"], row["chain_bytes"]
        if (turns is not None and turns > MAX_TURNS) or (history is not None and history > MAX_HISTORY_BYTES):
            raise _too_long(previous_response_id)
        return ChainHead(previous_response_id, turns, history)

    async def history(self, tenant_id: str, previous_response_id: str) -> list[dict[str, Any]]:
        """The conversation up to that response: each turn's input items, then its output (only those
        columns: a turn's request document — tools, schemas — is never read)."""
        rows = await self._pool.fetch(queries.response_chain, previous_response_id, tenant_id, MAX_TURNS,
                                      MAX_HISTORY_BYTES)
        if not rows:
            raise NotFound(f"Previous response with id '{previous_response_id[:80]}' not found.",
                           param="previous_response_id")
        oldest = rows[0]
        if oldest["bytes"] > MAX_HISTORY_BYTES or (oldest["depth"] >= MAX_TURNS and oldest["previous_response_id"]):
            raise _too_long(previous_response_id)
        if oldest["previous_response_id"] is not None:
            # A turn in the middle was deleted or expired: replaying the rest would silently change the conversation.
            raise NotFound(f"An earlier turn of this conversation ('{oldest['previous_response_id'][:80]}') was deleted "
                           "or has expired.", param="previous_response_id")
        items: list[dict[str, Any]] = []
        for row in rows:
            items += row["input"]
            items += row["output"]
        return items


def turn_bytes(input_items: list[dict[str, Any]], output: list[dict[str, Any]]) -> int:
    """What replaying one stored turn costs, at most: the larger of the JSON a walk loads (its input
    items and output) and the chat messages it renders. Summed over a chain, it bounds how much a
    chained request's body grows once the chain is read — so the request is bounded (for admission)
    from the chain's recorded size, before anything is read."""
    loaded = len(_encode(input_items)) + len(_encode(output))
    return max(loaded, len(_encode(chat_messages(input_items + output))))


def _too_long(previous_response_id: str) -> InvalidRequest:
    return InvalidRequest(f"the conversation up to '{previous_response_id[:80]}' is longer than can be replayed "
                          f"({MAX_TURNS} turns or {MAX_HISTORY_BYTES // 2**20} MiB); start a new one",
                          param="previous_response_id", code="conversation_too_long")


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
