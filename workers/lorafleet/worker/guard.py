"""The only way into a worker's engine: an ASGI middleware vLLM loads with ``--middleware``.

vLLM's own ``--api-key`` guards only ``/v1/*``; ``/invocations``, ``/tokenize``, ``/adapters`` and
whatever a new vLLM version mounts answer anyone who can reach the port. This guard sits outside
every route vLLM registers and is deny-by-default:

- ``GET /health`` answers without a token (probes; it says nothing but "up").
- Everything else needs ``Authorization: Bearer <LORAFLEET_INTERNAL_TOKEN>``; without it: 401.
- With the token, only the routes the gateway uses pass (:data:`ALLOWED`); any other path is 404,
  so runtime LoRA loading from a client-chosen path (``/v1/load_lora_adapter``, ``/adapters``)
  and vLLM's debug/admin routes are unreachable whoever calls.

The guard also keeps the engine's activity (requests in flight on the generation routes and the
time of the last one) for the idle timer of scale-to-zero; see :mod:`lorafleet.worker.activity`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from lorafleet.worker.activity import ACTIVITY

OPEN = frozenset({("GET", "/health")})
# (method, path) the gateway calls. Generation routes count as activity.
GENERATION = frozenset({
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/embeddings"),
})
ALLOWED = GENERATION | frozenset({
    ("GET", "/v1/models"),
    ("GET", "/metrics"),
})
# The worker's own routes (lorafleet.worker.endpoints), all behind the token.
OWN_ROUTES = re.compile(r"^/lorafleet/[A-Za-z0-9_./-]{1,200}$")

_UNAUTHORIZED = (401, b'{"error":{"message":"missing or invalid internal token","type":"authentication_error",'
                      b'"param":null,"code":"invalid_internal_token"}}')
_NOT_FOUND = (404, b'{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":"not_found"}}')


def _token_digest() -> bytes:
    token = os.environ.get("LORAFLEET_INTERNAL_TOKEN", "")
    if not token:
        raise RuntimeError("LORAFLEET_INTERNAL_TOKEN is empty: a worker never runs unauthenticated")
    return hashlib.sha256(token.encode()).digest()


class InternalGuard:
    """Pure ASGI middleware: authenticate every HTTP request, pass only the allowlist."""

    def __init__(self, app) -> None:
        self.app = app
        self._digest = _token_digest()

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                scheme, _, presented = value.partition(b" ")
                if scheme.lower() != b"bearer":
                    return False
                return hmac.compare_digest(hashlib.sha256(presented.strip()).digest(), self._digest)
        return False

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, send)
            return
        if kind != "http":  # websockets (realtime audio …): nothing of ours uses them
            await _refuse_websocket(send)
            return
        route = (scope["method"], scope["path"])
        if route in OPEN:
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            await _answer(send, *_UNAUTHORIZED)
            return
        if route in GENERATION:
            await ACTIVITY.track(self.app, scope, receive, send)
            return
        if route in ALLOWED or OWN_ROUTES.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        await _answer(send, *_NOT_FOUND)


async def _answer(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _refuse_websocket(send) -> None:
    await send({"type": "websocket.close", "code": 1008})
