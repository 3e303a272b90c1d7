"""One typed context per request: its id, who called, what happened — and its one log line.

A raw ASGI middleware creates the :class:`RequestContext` before Litestar routes the request (so
404s, 405s and 413s have one too), puts the request id on the response (``x-request-id``) and in
structlog's contextvars (every line logged while serving it carries the id), and writes the
request's one log line after the response's last byte. Handlers receive the same object through
dependency injection (``context: RequestContext``) and fill in typed fields; nothing is read back
by string key. It describes the request only: the app's services reach a handler through their
own dependency (gateway/dependencies.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from lorafleet.core.ids import request_id as new_request_id
from lorafleet.core.logging import redact_url
from lorafleet.gateway.metrics import GatewayMetrics

if TYPE_CHECKING:
    from lorafleet.gateway.auth import Principal

log = structlog.get_logger("lorafleet.access")

_SCOPE_KEY = "lorafleet.context"
# Set only by the batch dispatcher, in-process (gateway/batches/inprocess.py): never from the wire.
BATCH_SCOPE_KEY = "lorafleet.batch"


@dataclass(frozen=True, slots=True)
class BatchOrigin:
    """A batch line run through a route: whose key it runs as, and its derived request id."""

    batch_id: str
    line: int
    request_id: str     # derived from the batch and the line: a line run twice is one ledger row
    tenant_id: str
    api_key_id: str
_QUIET_ROUTES = frozenset({"/metrics", "/healthz", "/livez", "/readyz"})


class RequestContext:
    """What one request is and what became of it; never API keys, prompts or completions.

    A plain slotted class, not a dataclass: Litestar validates dependency values against their
    annotations, and a plain class costs it one isinstance check.
    """

    __slots__ = ("request_id", "method", "path", "client", "started", "status", "client_gone",
                 "principal", "tenant_id", "key_id", "session_id", "operator", "audit_resource", "model", "outcome", "error_code", "prompt_tokens", "completion_tokens",
                 "ttft_ms", "worker", "attempts", "dropped_fields", "response_headers", "receive", "batch",
                 "abort_connection")

    def __init__(self, request_id: str, method: str, path: str, client: str) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        self.client = client
        self.started = time.perf_counter()
        self.status = 500
        self.client_gone = False                  # the client disconnected before we answered
        self.principal: Principal | None = None   # the API key's, once the tenant routes' guard has run
        self.tenant_id: str | None = None
        self.key_id: str | None = None
        self.session_id: str | None = None        # a dashboard session's public handle (its digest's prefix)
        self.operator = False                     # the admin token was checked (or the operator's session)
        self.audit_resource: str | None = None    # the object a change made, when neither path nor answer names it
        self.model: str | None = None             # as the client named it
        self.outcome: str | None = None           # for completions: success, upstream_error, client_disconnect, …
        self.error_code: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.ttft_ms: float | None = None
        self.worker: str | None = None            # the opaque label of the worker that served it
        self.attempts = 0                         # workers tried (failover)
        self.dropped_fields: tuple[str, ...] = ()  # OpenAI fields the engine does not serve: not forwarded
        self.response_headers: list[tuple[bytes, bytes]] = []  # added to whatever answers
        self.receive: Receive | None = None        # the request's ASGI receive, for wait_client_gone
        self.abort_connection: Callable[[], None] | None = None  # drop the connection and what it buffers
        self.batch: BatchOrigin | None = None      # a batch line (dispatched in-process), else None

    async def wait_client_gone(self) -> None:
        """Return once the client has disconnected: for a handler that waits on something else meanwhile
        (its body already read). The server says so when the connection closes; it never returns otherwise
        before the response is sent."""
        receive = self.receive
        if receive is None:
            await asyncio.Event().wait()
            return
        while not self.client_gone:
            if (await receive())["type"] == "http.disconnect":
                self.client_gone = True

    def settle(self, outcome: str, prompt_tokens: int, completion_tokens: int, ttft_ms: float | None) -> None:
        """How a metered request ended, for its log line (from its ledger row)."""
        self.outcome = outcome
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.ttft_ms = ttft_ms

    def log_fields(self, elapsed: float) -> dict[str, Any]:
        fields = {"request_id": self.request_id, "method": self.method, "path": redact_url(self.path),
                  "status": self.status, "latency_ms": round(elapsed * 1000, 2)}
        if self.batch is not None:
            fields["batch_id"] = self.batch.batch_id
        for name in ("tenant_id", "key_id", "model", "outcome", "error_code", "prompt_tokens", "completion_tokens",
                     "ttft_ms", "worker"):
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        if self.attempts > 1:
            fields["attempts"] = self.attempts
        if self.dropped_fields:
            fields["dropped_fields"] = list(self.dropped_fields)  # names only: values may hold prompt text
        return fields


def _connection_abort(receive: Receive) -> Callable[[], None] | None:
    """The server connection's ``abort`` (uvicorn's request cycle keeps its asyncio transport; ASGI has no
    way to say "drop this connection"): for a response that must end now, its unsent bytes discarded —
    a plain close waits, holding them, until a client that stopped reading takes them. None elsewhere."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    abort = getattr(transport, "abort", None)
    return abort if callable(abort) else None


def context_of(scope: Scope) -> RequestContext:
    return scope[_SCOPE_KEY]  # type: ignore[literal-required]


def context_middleware(metrics: GatewayMetrics):
    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            client = scope.get("client")
            batch: BatchOrigin | None = scope.get(BATCH_SCOPE_KEY)  # type: ignore[assignment]
            context = RequestContext(batch.request_id if batch else new_request_id(), scope["method"], scope["path"],
                                     client[0] if client else "unknown")
            context.batch = batch
            scope[_SCOPE_KEY] = context  # type: ignore[literal-required]
            request_id_header = (b"x-request-id", context.request_id.encode())
            structlog.contextvars.bind_contextvars(request_id=context.request_id)

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    context.status = message["status"]
                    message["headers"] = [*message.get("headers", ()), request_id_header, *context.response_headers]
                await send(message)

            async def receive_watching() -> Message:
                message = await receive()
                if message["type"] == "http.disconnect":
                    context.client_gone = True
                return message

            context.receive = receive_watching
            context.abort_connection = _connection_abort(receive)
            try:
                await app(scope, receive_watching, send_with_id)
            finally:
                elapsed = time.perf_counter() - context.started
                route = scope.get("path_template") or "unmatched"
                metrics.observe_request(route, context.status, elapsed)
                if route not in _QUIET_ROUTES:
                    log.info("request", **context.log_fields(elapsed))
                structlog.contextvars.unbind_contextvars("request_id")

        return middleware

    return factory
