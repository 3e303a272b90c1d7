"""The audit log's one writer: an ASGI layer that records every change, keyed by the route.

Every route that changes something declares its audit event in its ``opt`` (:func:`audited`, or
``scope(..., audit=…)``); a route that changes nothing a tenant administers (inference, signing in)
declares ``False`` — a unit test fails for any non-GET route that declares neither, so no mutating
route can be forgotten. The layer holds the answer of an audited route until its row is written:
a client that saw a change succeed finds it in the log (a failed write answers 503, never a silent
gap). What one row holds: who (the key, the dashboard session or the operator, from the request's
context), what (the event type, the object — the path's id or the created object's ``id`` — and the
JSON body's fields with every secret-like field dropped), from where (address, user agent) and the
request id. Refused calls (4xx) change nothing and are not recorded, except a refused authorization
on the operator API (``admin.authorization_failed``), which is the point of an audit trail there.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from lorafleet.core.logging import redact_url
from lorafleet.gateway.context import context_of
from lorafleet.tenancy.audit import Actor, record_event

log = structlog.get_logger("lorafleet.audit")

AUDIT = "audit"                    # the route's opt: the event type (str) or False (not a change)
AUDIT_REFUSALS = "audit_refusals"  # the route's opt: record refused authorization (the operator API)
AUTHORIZATION_FAILED = "admin.authorization_failed"

MAX_CAPTURED_BYTES = 64 * 1024     # a JSON body or answer larger than this is not parsed for fields or ids
# Path parameters that name the object a route changes, in order of preference.
_RESOURCE_PARAMS = ("delivery_id", "webhook_endpoint_id", "key_id", "adapter_id", "file_id", "fine_tuning_job_id", "batch_id",
                    "response_id", "model_id", "project_id", "tenant_id")
# Refusals recorded on the operator API. Not 429: a throttled address is refused without its token being
# compared, and recording those would let a flood grow the table as fast as it can send.
_REFUSED = frozenset({401, 403})


def audited(event: str | bool) -> dict[str, Any]:
    """A route's ``opt``: the audit event it records on success (``False``: the route changes nothing audited)."""
    return {AUDIT: event}


def _json(chunks: list[bytes], size: int) -> Any:
    if not chunks or size > MAX_CAPTURED_BYTES:
        return None
    try:
        return msgspec.json.decode(b"".join(chunks))
    except msgspec.DecodeError:
        return None


def _actor(scope: Scope, user_agent: str | None) -> tuple[Actor, str | None]:
    """Who made the request, and the tenant it acted in (None for the operator: found from the path)."""
    context = context_of(scope)
    if context.session_id is not None:
        return Actor("session", context.session_id, context.key_id, context.client, user_agent), context.tenant_id
    if context.operator:
        return Actor("operator", "operator", None, context.client, user_agent), None
    if context.key_id is not None:
        return Actor("api_key", context.key_id, None, context.client, user_agent), context.tenant_id
    return Actor("anonymous", None, None, context.client, user_agent), None


def audit_layer(app: ASGIApp, services_of: Any) -> ASGIApp:
    """Wrap the app's ASGI handler (inside the context middleware, which gives each request its context)."""

    async def layer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body: list[bytes] = []
        body_size = 0
        answer: list[Message] = []
        answer_size = 0

        def event_of() -> tuple[str | None, bool]:
            handler = scope.get("route_handler")
            opt = getattr(handler, "opt", None) or {}
            event = opt.get(AUDIT)
            return (event if isinstance(event, str) else None), bool(opt.get(AUDIT_REFUSALS))

        async def receive_capturing() -> Message:
            nonlocal body_size
            message = await receive()
            if message["type"] == "http.request" and body_size <= MAX_CAPTURED_BYTES and event_of()[0] is not None:
                chunk = message.get("body", b"")
                body_size += len(chunk)
                if body_size <= MAX_CAPTURED_BYTES:
                    body.append(chunk)
            return message

        async def send_holding(message: Message) -> None:
            nonlocal answer_size
            if message["type"] == "http.response.start":
                event, refusals = event_of()
                status = message["status"]
                if not ((event is not None and status < 400) or (refusals and status in _REFUSED)):
                    answer.clear()
                    await send(message)
                    return
                answer.append(message)
                return
            if not answer:
                await send(message)
                return
            answer.append(message)
            answer_size += len(message.get("body", b""))
            if message.get("more_body", False):
                return
            start, parts = answer[0], answer[1:]
            answer.clear()
            try:
                await _record(scope, start, parts, answer_size)
            except Exception:  # noqa: BLE001 - the change happened; an unrecorded one must not look fine
                log.exception("audit_write_failed", request_id=context_of(scope).request_id)
                failed = msgspec.json.encode({"error": {
                    "message": "The change was made but could not be recorded in the audit log; "
                               "the operator has been told. Check the object before retrying.",
                    "type": "server_error", "param": None, "code": "audit_unavailable"}})
                await send({"type": "http.response.start", "status": 503,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(failed)).encode())]})
                await send({"type": "http.response.body", "body": failed})
                return
            await send(start)
            for part in parts:
                await send(part)

        async def _record(scope: Scope, start: Message, parts: list[Message], size: int) -> None:
            event, _ = event_of()
            status = start["status"]
            headers = dict(start.get("headers") or ())
            if headers.get(b"idempotent-replayed") == b"true":
                return  # a replayed answer: the change was recorded when it was made
            if status >= 400:
                event = AUTHORIZATION_FAILED
            request_headers = dict(scope.get("headers") or ())
            user_agent = request_headers.get(b"user-agent", b"").decode(errors="replace") or None
            actor, tenant_id = _actor(scope, user_agent)
            params = scope.get("path_params") or {}
            # The object changed: what a creation made (its answer's id: the path names its parent, if
            # anything), else the one the path names.
            named = next((str(params[name]).lstrip("/") for name in _RESOURCE_PARAMS if name in params), None)
            if "alias" in params and "adapter_name" in params:  # an alias is its adapter's: `name@alias`
                named = f"{params['adapter_name']}@{params['alias']}"
            made = None
            if status < 400 and event.endswith((".created", ".granted")):
                answered = _json([p.get("body", b"") for p in parts], size)
                if isinstance(answered, dict) and isinstance(answered.get("id"), (str, int)):
                    made = str(answered["id"])
            resource_id = context_of(scope).audit_resource or made or named
            extra: dict[str, Any] = {}
            if status >= 400:
                # A refused call on the operator API is the operator's to read, not a tenant's.
                tenant_id, params = None, {}
                extra["path"] = redact_url(scope.get("path", ""))
            elif tenant_id is None and "tenant_id" in params:
                tenant_id = str(params["tenant_id"])
            elif tenant_id is None and event == "organization.created":
                tenant_id = resource_id
            await record_event(services_of().pool, event=event, actor=actor, tenant_id=tenant_id,
                               resource_id=resource_id, fields=_json(body, body_size) if status < 400 else None,
                               extra=extra, request_id=context_of(scope).request_id, status=status,
                               key_id=params.get("key_id"), adapter_id=params.get("adapter_id"))

        await app(scope, receive_capturing, send_holding)

    return layer
