"""One error hierarchy, rendered in one place as the OpenAI error envelope.

``{"error": {"message", "type", "param", "code"}}`` — the same body vLLM and OpenAI send, so
the official SDKs raise their matching exception classes.
"""

from __future__ import annotations


class LoraFleetError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class ClientError(LoraFleetError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = None


class InvalidRequest(ClientError):
    status_code = 400
    default_code = "invalid_request"


class AuthenticationFailed(ClientError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(ClientError):
    status_code = 403
    error_type = "permission_error"
    default_code = "insufficient_permissions"


class NotFound(ClientError):
    status_code = 404
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class MethodNotAllowed(ClientError):
    status_code = 405
    default_code = "method_not_allowed"


class RequestTimeout(ClientError):
    """The client stopped sending its request body (nothing for the route's stall timeout)."""

    status_code = 408
    default_code = "request_timeout"


class Conflict(ClientError):
    status_code = 409
    default_code = "conflict"


class PayloadTooLarge(ClientError):
    status_code = 413
    default_code = "request_too_large"


class UnsupportedMediaType(ClientError):
    status_code = 415
    default_code = "unsupported_media_type"


class RateLimited(ClientError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class InsufficientQuota(ClientError):
    status_code = 402
    error_type = "insufficient_quota"
    default_code = "insufficient_quota"


class ClientDisconnected(ClientError):
    """The client went away before the request was read or answered: nobody receives this (logged as 499)."""

    status_code = 499
    default_code = "client_disconnected"


class IdempotencyConflict(Conflict):
    default_code = "idempotency_key_reused"


class EngineRejected(InvalidRequest):
    """The inference engine refused the request on its merits (its message is passed on). Code
    ``context_length_exceeded`` for a prompt past the context (OpenAI's code), else none, as OpenAI
    answers a request it cannot run (a batch line's ``error.code`` then names the type)."""

    default_code = None


class ServiceUnavailable(LoraFleetError):
    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"


class BlobStoreUnavailable(ServiceUnavailable):
    """The adapter store could not be read or written (disk, permissions, S3): nothing was stored."""

    default_code = "blob_store_unavailable"

    def __init__(self, message: str = "The adapter store is unavailable; retry later.", *,
                 code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": "5"})


# What a worker answers for an adapter whose weights it cannot fetch (424 Failed Dependency; vLLM
# never sends it): the gateway tries another worker and does not count it against this one.
ADAPTER_UNAVAILABLE_STATUS = 424


class AdapterUnavailable(ServiceUnavailable):
    """No worker could bring the adapter's weights to its engine (blob store unreadable, cache disk
    full); the worker itself is healthy and serves everything else."""

    default_code = "adapter_unavailable"

    def __init__(self) -> None:
        super().__init__("The adapter's weights could not be loaded right now; retry later.",
                         headers={"Retry-After": "5"})


class UpstreamError(LoraFleetError):
    """A worker failed to answer (connection, 5xx, malformed answer) and no other could take it."""

    status_code = 502
    error_type = "server_error"
    default_code = "upstream_error"
