"""Every error, ours or the framework's, becomes the OpenAI envelope; nothing leaks a stack trace."""

from __future__ import annotations

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException

from lorafleet.core import errors
from lorafleet.gateway.request_context import STATE_KEY

log = structlog.get_logger("lorafleet.errors")

_BY_STATUS: dict[int, type[errors.LoraFleetError]] = {
    400: errors.InvalidRequest,
    401: errors.AuthenticationFailed,
    403: errors.PermissionDenied,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedMediaType,
    429: errors.RateLimited,
    503: errors.ServiceUnavailable,
}


def _respond(request: Request, error: errors.LoraFleetError) -> Response[dict]:
    entry = request.scope.get("state", {}).get(STATE_KEY)
    if entry is not None:
        entry["error_code"] = error.code
    return Response(error.envelope(), status_code=error.status_code, headers=error.headers)


def handle_lorafleet_error(request: Request, exc: errors.LoraFleetError) -> Response[dict]:
    return _respond(request, exc)


def handle_http_exception(request: Request, exc: HTTPException) -> Response[dict]:
    if exc.status_code == 500 and "disconnected" in (exc.detail or ""):
        # The client left while its body was being read: nobody gets this answer; log it as such.
        error = errors.InvalidRequest("The client disconnected before sending the whole request.",
                                      code="client_disconnected")
        error.status_code = 499
        return _respond(request, error)
    cls = _BY_STATUS.get(exc.status_code)
    if cls is None:
        cls = errors.InvalidRequest if exc.status_code < 500 else errors.LoraFleetError
    if exc.status_code == 404:
        message = f"Unknown route {request.method} {request.url.path}."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    elif exc.status_code == 413:
        message = "The request body is larger than this server accepts."
    elif exc.status_code >= 500:
        message = "Internal server error."
    else:
        message = exc.detail or "Invalid request."
    error = cls(message)
    error.status_code = exc.status_code
    return _respond(request, error)


def handle_unexpected(request: Request, exc: Exception) -> Response[dict]:
    log.exception("unhandled_error", path=request.url.path)
    return _respond(request, errors.LoraFleetError("Internal server error.", code="internal_error"))


EXCEPTION_HANDLERS = {
    errors.LoraFleetError: handle_lorafleet_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
