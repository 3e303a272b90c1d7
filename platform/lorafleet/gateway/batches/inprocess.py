"""A batch line through the gateway's own app, in this process: the synchronous route, exactly.

The dispatcher calls the app as an ASGI server would, with one addition to the ASGI scope — the
line's :class:`~lorafleet.gateway.context.BatchOrigin` — which no HTTP client can set (a server
builds the scope from the request line and headers; it never copies a scope key from the wire). So
the line meets the same body schema, bounds, model resolution, admission, placement, failover, ledger
row and response shape as the synchronous call; the origin only says whose key it runs as, its
request id (derived from the batch and the line) and that it is priced and scheduled as a batch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from litestar.types import ASGIApp, Message
from lorafleet.gateway.context import BATCH_SCOPE_KEY, BatchOrigin


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    size: int = 0            # of the whole answer, kept or not
    too_large: bool = False  # more than ``max_bytes``: ``body`` is empty, nothing more of it was kept


async def call_route(app: ASGIApp, path: str, body: bytes, origin: BatchOrigin, *,
                     max_bytes: int | None = None) -> Answer:
    """POST ``body`` to ``path`` of ``app`` as ``origin``; the whole answer (a batch line never streams), or —
    past ``max_bytes`` — only its status and size: no more than ``max_bytes`` of it is ever held here."""
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "client": ("batch", 0), "server": ("batch", 0), "state": {},
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        BATCH_SCOPE_KEY: origin,
    }
    sent = False
    status = 500
    chunks: list[bytes] = []
    size = 0

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        # Nobody disconnects: the dispatcher waits for the whole answer (a server would block here too).
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            piece = message.get("body", b"")
            size += len(piece)
            if max_bytes is not None and size > max_bytes:
                chunks.clear()  # the rest is counted, not kept
            else:
                chunks.append(piece)

    await app(scope, receive, send)  # type: ignore[arg-type]
    if max_bytes is not None and size > max_bytes:
        return Answer(status, b"", size, too_large=True)
    return Answer(status, b"".join(chunks), size)
