"""Noticing that a client has gone while its request waits, before any byte of the answer is sent.

A streamed answer notices by itself (Litestar's streaming response listens for ``http.disconnect``);
a request that waits for something before it answers at all (held for a worker to wake) has
nobody listening, so it would wait on, and then run, for a client that is no longer there.
"""

from __future__ import annotations

import asyncio

from lorafleet.gateway.context import RequestContext


async def client_gone(context: RequestContext) -> None:
    """Return once the client has disconnected. Only after the request's body has been read: it
    consumes the connection's ASGI messages."""
    receive = context.receive
    if receive is None:  # no ASGI connection to watch: never returns
        await asyncio.Event().wait()
    while (await receive())["type"] != "http.disconnect":
        pass  # a late, empty body message: keep listening
