"""Per-request id, ``x-request-id`` header, metrics and the one structured log line per request.

Raw ASGI middleware so it also sees requests Litestar rejects before routing (404, 405, 413) and
logs a streamed response only after its last byte. Handlers add fields (tenant, key, model,
tokens) to the mutable :class:`RequestLog` kept in the scope's state.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from lorafleet.core.ids import request_id as new_request_id
from lorafleet.gateway.metrics import GatewayMetrics

log = structlog.get_logger("lorafleet.access")

STATE_KEY = "lorafleet_request_log"


class RequestLog(dict[str, Any]):
    """Fields of this request's log line; never holds API keys or prompt text."""


def request_log(scope: Scope) -> RequestLog:
    return scope["state"][STATE_KEY]


def request_context_middleware(metrics: GatewayMetrics):
    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            rid = new_request_id()
            entry = RequestLog(request_id=rid, method=scope["method"], path=scope["path"])
            scope.setdefault("state", {})[STATE_KEY] = entry
            status_holder = [500]

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status_holder[0] = message["status"]
                    message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                await send(message)

            try:
                await app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                route = scope.get("path_template") or "unmatched"
                metrics.requests.labels(route, str(status_holder[0])).inc()
                metrics.request_seconds.labels(route).observe(elapsed)
                if route not in ("/metrics", "/healthz", "/readyz"):
                    log.info("request", status=status_holder[0], latency_ms=round(elapsed * 1000, 2), **entry)

        return middleware

    return factory
