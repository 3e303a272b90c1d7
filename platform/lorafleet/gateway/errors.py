"""Every error, ours or the framework's, becomes the OpenAI envelope; nothing leaks a stack trace.

Code raises the error hierarchy (core/errors.py) and nothing else; Litestar's own exceptions (no
route, wrong method, body too large, a query parameter that does not parse) are translated here
into the hierarchy's classes, by status — never by matching their text.
"""

from __future__ import annotations

import asyncpg
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from lorafleet.core import errors
from lorafleet.core.logging import redact_url
from lorafleet.gateway.context import context_of

log = structlog.get_logger("lorafleet.errors")


def _respond(request: Request, error: errors.LoraFleetError) -> Response[dict]:
    context_of(request.scope).error_code = error.code
    return Response(error.envelope(), status_code=error.status_code, headers=error.headers)


def _wire_name(request: Request, param: str | None) -> str | None:
    """A query parameter's name as the client spells it (``effective_at[gte]``), not the handler's argument's."""
    handler = request.scope.get("route_handler")
    try:
        definition = handler.parsed_fn_signature.parameters[param].kwarg_definition  # type: ignore[index]
    except (AttributeError, KeyError, TypeError):
        return param
    return getattr(definition, "name", None) or getattr(definition, "query", None) or param


def translate(request: Request, exc: HTTPException) -> errors.LoraFleetError:
    """Litestar's exception as one of ours."""
    if context_of(request.scope).client_gone:
        return errors.ClientDisconnected("The client disconnected before the request was answered.")
    status = exc.status_code
    if isinstance(exc, ValidationException):
        extra = exc.extra if isinstance(exc.extra, list) else []
        first = extra[0] if extra and isinstance(extra[0], dict) else {}
        param = _wire_name(request, first.get("key"))
        if param == "data":  # a typed body that is not there at all
            return errors.InvalidRequest("The request body is empty; send a JSON object.")
        detail = first.get("message") or exc.detail or "Invalid request."
        return errors.InvalidRequest(f"Invalid value for '{param}': {detail}" if param else str(detail), param=param)
    if status == 404:
        return errors.NotFound(f"Unknown route {request.method} {request.url.path[:200]}.")
    if status == 405:
        return errors.MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path[:200]}.")
    if status == 413:
        return errors.PayloadTooLarge("The request body is larger than this server accepts.")
    if status == 415:
        return errors.UnsupportedMediaType(exc.detail or "Unsupported media type.")
    if status == 401:
        return errors.AuthenticationFailed(exc.detail or "Authentication required.")
    if status == 403:
        return errors.PermissionDenied(exc.detail or "Permission denied.")
    if 400 <= status < 500:
        return errors.InvalidRequest(exc.detail or "Invalid request.")
    return errors.LoraFleetError("Internal server error.", code="internal_error")


def handle_lorafleet_error(request: Request, exc: errors.LoraFleetError) -> Response[dict]:
    return _respond(request, exc)


def handle_http_exception(request: Request, exc: HTTPException) -> Response[dict]:
    error = translate(request, exc)
    if error.status_code >= 500:
        log.error("framework_error", status=exc.status_code, detail=str(exc.detail)[:300])
    return _respond(request, error)


def handle_unstorable_text(request: Request, _: asyncpg.CharacterNotInRepertoireError | asyncpg.UntranslatableCharacterError
                           ) -> Response[dict]:
    """PostgreSQL text cannot hold NUL (U+0000), nor jsonb its escape (``\\u0000``, UntranslatableCharacter): a
    path, query or body value carrying one is the request's fault."""
    return _respond(request, errors.InvalidRequest("Text in this request may not contain NUL (\\u0000) characters."))


def handle_unexpected(request: Request, exc: Exception) -> Response[dict]:
    if context_of(request.scope).client_gone:
        return _respond(request, errors.ClientDisconnected("The client disconnected before the request was answered."))
    log.exception("unhandled_error", path=redact_url(request.url.path))
    return _respond(request, errors.LoraFleetError("Internal server error.", code="internal_error"))


EXCEPTION_HANDLERS = {
    errors.LoraFleetError: handle_lorafleet_error,
    HTTPException: handle_http_exception,
    asyncpg.CharacterNotInRepertoireError: handle_unstorable_text,
    asyncpg.UntranslatableCharacterError: handle_unstorable_text,
    Exception: handle_unexpected,
}
