"""The body a worker receives for a validated request.

- ``model`` becomes the served name: the base model, or the adapter's ``adp_`` id (workers never
  see a tenant's names);
- OpenAI fields the engine does not serve are left out (schemas.DROPPED);
- a stream always asks for usage on every chunk (``include_usage`` + ``continuous_usage_stats``),
  so a stream cut anywhere is still metered exactly; the client sees the shape it asked for;
- a batch line carries a larger ``priority`` than interactive requests (:func:`with_priority`);
- ``cache_salt`` is the tenant's: vLLM salts its prefix cache with it, so one tenant cannot learn
  from timing whether another sent the same prompt. It is a keyed hash of the tenant id (HMAC with
  a secret only the gateways hold), stable across gateways and restarts, never guessable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import msgspec
from lorafleet.gateway.openai.schemas import DROPPED, StreamOptions, _Sampling

_encode = msgspec.json.Encoder().encode
_UPSTREAM_STREAM_OPTIONS = StreamOptions(include_usage=True, continuous_usage_stats=True)


class CacheSalts:
    """Each tenant's prefix-cache salt, derived from a gateway secret and remembered."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"lorafleet cache salt|" + secret.encode()).digest()
        self._salts: dict[str, bytes] = {}

    def salt(self, tenant_id: str) -> bytes:
        salt = self._salts.get(tenant_id)
        if salt is None:
            digest = hmac.new(self._key, tenant_id.encode(), hashlib.sha256).digest()
            salt = self._salts[tenant_id] = base64.urlsafe_b64encode(digest[:24])
        return salt


def dropped_fields(request: _Sampling) -> tuple[str, ...]:
    """OpenAI fields the client sent that the engine does not serve (their names, for the log)."""
    return tuple(name for name in DROPPED[type(request)] if getattr(request, name) is not None)


def upstream_body(request: _Sampling, served_model: str, cache_salt: bytes, dropped: tuple[str, ...]) -> bytes:
    changes: dict[str, object] = dict.fromkeys(dropped)
    changes["model"] = served_model
    if request.stream:
        changes["stream_options"] = _UPSTREAM_STREAM_OPTIONS
    return salted(_encode(msgspec.structs.replace(request, **changes)), cache_salt)


def with_priority(body: bytes, priority: int) -> bytes:
    """``body`` (a JSON object) with vLLM's scheduling ``priority`` (larger runs later; the engine runs with
    ``--scheduling-policy priority``): how batch lines yield to interactive requests inside the engine."""
    return body[:-1] + b',"priority":' + str(int(priority)).encode() + b"}"


def salted(body: bytes, cache_salt: bytes) -> bytes:
    """``body`` (a request Struct encoded as a JSON object with at least "model") with the tenant's salt."""
    return body[:-1] + b',"cache_salt":"' + cache_salt + b'"}'
