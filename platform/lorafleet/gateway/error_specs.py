"""The error answers a route can give, documented in OpenAPI with the body they really carry.

Every error this gateway sends is OpenAI's envelope (errors.py). Left alone, Litestar documents a
route's 400 as its own ``{status_code, detail, extra}`` and no other error at all, so a generated
client (or a schema fuzzer) expects bodies the gateway never sends. A handler declares what it can
answer with ``responses=error_responses(400, 404, *API_KEY)``; a 400 listed here replaces Litestar's.
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, Schema
from lorafleet.core.types import ErrorEnvelope

_DESCRIPTIONS = {
    400: "Invalid request: `param` names the parameter or body field at fault.",
    401: "Credentials missing, malformed, unknown, revoked or expired.",
    402: "The tenant's budget or prepaid credit does not cover the request's worst case.",
    403: "The API key lacks the scope this route needs (or the key it acts on holds scopes it lacks).",
    404: "No such object for this caller; another tenant's is answered exactly like a missing one.",
    408: "The client stopped sending the request body; send it again.",
    409: "A conflict: a name in use, a quota reached, or an Idempotency-Key reused for another request.",
    413: "The request body is larger than this route accepts.",
    415: "The request body has a media type this route does not accept.",
    429: "A rate or concurrency limit, or too many failed sign-ins from this address; retry after Retry-After seconds.",
    502: "The inference worker failed to answer or answered wrongly; retry the request.",
    503: "Something this request needs is unavailable (the database, a ready worker, an adapter's weights); "
         "retry after Retry-After seconds when given.",
}

# What any route behind an API key can answer: bad credentials, a missing scope, a throttled
# address, the key database out of reach.
API_KEY = (401, 403, 429, 503)
# What any route behind the operator's admin token can answer.
ADMIN_TOKEN = (401, 429)


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI responses for these error statuses, each the error envelope."""
    return {status: ResponseSpec(ErrorEnvelope, description=_DESCRIPTIONS[status], generate_examples=False)
            for status in sorted(set(statuses))}


@dataclass
class StreamingOperation(Operation):
    """An operation whose 200 is JSON, or with ``stream: true`` server-sent events: both documented
    (a ResponseSpec carries one media type; this adds the second)."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if ok is not None and not isinstance(ok, dict) and getattr(ok, "content", None) is not None:
            ok.content["text/event-stream"] = OpenAPIMediaType(schema=Schema(
                type=OpenAPIType.STRING,
                description="`data: {chunk}` events, a final `data: [DONE]`; an error after the headers is "
                            "one `data: {\"error\": …}` event. Comment lines (`: keepalive`) may come first "
                            "while the request waits for a worker."))
