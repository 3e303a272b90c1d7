"""Pass a worker's SSE stream through chunk by chunk, reshaping usage to what the client asked for.

Upstream every chunk carries usage (the relay asks for ``continuous_usage_stats``): the meter
takes each, so a stream cut anywhere is billed for exactly what the engine produced up to there.
The client gets usage only in the shape it asked for: none, the final usage-only chunk
(``include_usage``), or usage on every chunk (``continuous_usage_stats`` too). The final usage
chunk also carries ``cost_micro_usd``, the exact cost as decimal text (the response headers left
before the cost was known).

A worker that fails mid-stream (connection lost, no ``[DONE]``, a malformed chunk) ends the
client's stream with one error event in the OpenAI envelope; the request is metered as an
upstream error with the tokens delivered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import aiohttp
import msgspec
import structlog
from lorafleet.billing.ledger_row import Outcome
from lorafleet.gateway.metering.meter import Meter

log = structlog.get_logger("lorafleet.relay")

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

# vLLM-only response fields, dropped when empty so responses look like OpenAI's.
_ENGINE_ONLY_FIELDS = ("prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params",
                       "ec_transfer_params", "metrics")
_ENGINE_ONLY_CHOICE_FIELDS = ("token_ids", "routed_experts", "prompt_token_ids", "prompt_logprobs")
_MID_STREAM_ERROR = b"data: " + _encode({"error": {
    "message": "The inference worker failed mid-stream; the output is incomplete.", "type": "server_error",
    "param": None, "code": "upstream_error"}}) + b"\n\n"


def tidy(document: dict[str, Any], public_model: str) -> dict[str, Any]:
    """A worker's response (or chunk) as the client should see it: its own model name, no engine-only nulls."""
    document["model"] = public_model
    for name in _ENGINE_ONLY_FIELDS:
        if document.get(name, 0) is None:
            del document[name]
    for choice in document.get("choices") or ():
        for name in _ENGINE_ONLY_CHOICE_FIELDS:
            if choice.get(name, 0) is None:
                del choice[name]
    return document


class ChunkShaper(Protocol):
    """How a worker's chat chunks reach the client: as chat chunks (ChatChunks) or as another API's events."""

    def chunk(self, chunk: dict[str, Any]) -> bytes | None: ...

    def done(self) -> bytes | None: ...

    def upstream_error(self, chunk: dict[str, Any]) -> bytes: ...

    async def end(self, *, failed: bool, error_forwarded: bool) -> bytes | None: ...


class ChatChunks:
    """Chunks passed through as they came, usage reshaped to what the client asked for."""

    def __init__(self, meter: Meter, public_model: str, *, client_usage: bool, client_continuous_usage: bool) -> None:
        self._meter = meter
        self._public_model = public_model
        self._client_usage = client_usage
        self._client_continuous = client_continuous_usage

    def chunk(self, chunk: dict[str, Any]) -> bytes | None:
        usage = chunk.get("usage")
        if not chunk.get("choices"):
            # the trailing usage-only chunk, with the cost (headers left before it was known)
            if not (self._client_usage and usage):
                return None
            usage["cost_micro_usd"] = self._meter.cost
            return b"data: " + _encode(tidy(chunk, self._public_model)) + b"\n\n"
        if not self._client_usage:
            chunk.pop("usage", None)
        elif not self._client_continuous:
            chunk["usage"] = None
        return b"data: " + _encode(tidy(chunk, self._public_model)) + b"\n\n"

    def done(self) -> bytes | None:
        return b"data: [DONE]\n\n"

    def upstream_error(self, chunk: dict[str, Any]) -> bytes:
        return b"data: " + _encode(chunk) + b"\n\n"

    async def end(self, *, failed: bool, error_forwarded: bool) -> bytes | None:
        return _MID_STREAM_ERROR if failed and not error_forwarded else None


class SseRelay:
    def __init__(self, meter: Meter, upstream: aiohttp.ClientResponse, shaper: ChunkShaper, *, request_id: str) -> None:
        self._meter = meter
        self._upstream = upstream
        self._shaper = shaper
        self._request_id = request_id
        self._done = False
        self._failed = False
        self._error_forwarded = False

    async def events(self) -> AsyncIterator[bytes]:
        buffer = b""
        try:
            try:
                async for data in self._upstream.content.iter_any():
                    buffer += data
                    *events, buffer = buffer.split(b"\n\n")
                    # Events that arrived together leave together: one ASGI send, not one each.
                    out = b"".join(filter(None, map(self._reshape, events)))
                    if out:
                        yield out
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("upstream_stream_failed", error=repr(exc)[:300], request_id=self._request_id)
                self._failed = True
            if not self._done:
                self._failed = True  # the worker closed the stream without [DONE]
            last = await self._shaper.end(failed=self._failed, error_forwarded=self._error_forwarded)
            if last:
                yield last
        finally:
            # Also reached on cancellation (client gone): finish never awaits.
            self.finish()

    def _reshape(self, event: bytes) -> bytes | None:
        data = b"".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
        if not data:
            return None
        if data == b"[DONE]":
            self._done = True
            return self._shaper.done()
        try:
            chunk = _decode(data)
        except msgspec.DecodeError:
            log.warning("upstream_bad_chunk", request_id=self._request_id)
            self._failed = True
            return None
        if "error" in chunk:
            self._failed = self._error_forwarded = True
            return self._shaper.upstream_error(chunk)
        meter = self._meter
        meter.observe_usage(chunk.get("usage"))
        choices = chunk.get("choices")
        if choices and (meter.completion_tokens > 0 or any(_has_output(c) for c in choices)):
            meter.first_token()
        return self._shaper.chunk(chunk)

    def finish(self) -> None:
        if self._meter.finished:
            return
        if self._done and not self._failed:
            self._upstream.release()
            self._meter.finish(Outcome.SUCCESS, 200)
        else:
            # Closing the connection is what makes vLLM abort the request.
            self._upstream.close()
            self._meter.finish(Outcome.UPSTREAM_ERROR if self._failed else Outcome.CLIENT_DISCONNECT, 200 if self._failed else 499)

    def closer(self, events: AsyncIterator[bytes]) -> Callable[[], Any]:
        """After the response: close the generator if the client left while it was suspended."""
        async def close() -> None:
            try:
                await events.aclose()  # type: ignore[attr-defined]
            finally:
                self.finish()

        return close


def _has_output(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    if delta is not None:
        return bool(delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"))
    return bool(choice.get("text"))
