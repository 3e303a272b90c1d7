"""Forward one completion to a worker and meter it into the ledger exactly once.

Upstream we always ask for usage on every chunk (``include_usage`` + ``continuous_usage_stats``),
so a stream cut at any point — client disconnect, worker death — is still metered exactly: the
ledger gets the counts of the last chunk the engine sent us. The client sees usage only in the
shape it asked for. Closing the upstream connection when the client goes away makes vLLM abort
the request, so no tokens are generated for nobody.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import structlog
from litestar import Response
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from lorafleet.billing.pricing import Price, cost_micro_usd
from lorafleet.core.errors import LoraFleetError, ModelNotFound, ServiceUnavailable
from lorafleet.gateway.auth import Principal
from lorafleet.gateway.ledger import LedgerWriter, UsageRow
from lorafleet.gateway.metrics import GatewayMetrics
from lorafleet.gateway.request_context import RequestLog
from lorafleet.gateway.routing import WorkerRegistry, WorkerState

log = structlog.get_logger("lorafleet.relay")

_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode

# vLLM-only response fields, dropped when empty so responses look like OpenAI's.
_ENGINE_ONLY_FIELDS = ("prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params",
                       "ec_transfer_params", "metrics")
_ENGINE_ONLY_CHOICE_FIELDS = ("token_ids", "routed_experts", "prompt_token_ids", "prompt_logprobs")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
COST_HEADER = "x-lorafleet-cost-micro-usd"  # what this response costs the tenant, integer micro-USD


@dataclass(slots=True)
class CompletionCall:
    """Everything the relay needs about one admitted request."""

    request_id: str
    principal: Principal
    base_model_id: str
    base_model_name: str
    served_model: str      # what the worker calls it
    public_model: str      # what the client asked for, echoed back in responses
    endpoint: str          # "chat.completions" | "completions"
    upstream_path: str
    body: dict[str, Any]
    stream: bool
    client_usage: bool
    client_continuous_usage: bool
    log_entry: RequestLog
    adapter_id: str | None = None
    price: Price | None = None  # the version in effect when the request started
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    started: float = field(default_factory=time.perf_counter)


def _tidy(chunk: dict[str, Any], public_model: str) -> dict[str, Any]:
    chunk["model"] = public_model
    for name in _ENGINE_ONLY_FIELDS:
        if chunk.get(name, 0) is None:
            del chunk[name]
    for choice in chunk.get("choices") or ():
        for name in _ENGINE_ONLY_CHOICE_FIELDS:
            if choice.get(name, 0) is None:
                del choice[name]
    return chunk


def _upstream_error_envelope(status: int, payload: bytes, public_model: str) -> tuple[int, dict[str, Any]]:
    """A worker's error, passed on for client errors; hidden behind a 502 for its own failures."""
    if status == 404:
        # The worker no longer knows the model (an adapter deleted a moment ago): answer in the
        # client's terms, never with the internal adp_ id.
        return 404, ModelNotFound(f"The model `{public_model}` does not exist or you do not have access to it.",
                                  param="model").envelope()
    if 400 <= status < 500 and status not in (401, 403):
        try:
            error = _json_decode(payload).get("error") or {}
            message = str(error.get("message") or "The engine rejected the request.")
            param = error.get("param") if isinstance(error.get("param"), str) else None
        except (msgspec.DecodeError, AttributeError):
            message, param = "The engine rejected the request.", None
        return status, {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return 502, {"error": {"message": "The inference worker failed to answer; retry the request.",
                           "type": "server_error", "param": None, "code": "upstream_error"}}


class Relay:
    def __init__(self, http: aiohttp.ClientSession, registry: WorkerRegistry, ledger: LedgerWriter,
                 metrics: GatewayMetrics, internal_token: str, first_byte_timeout: float) -> None:
        self._http = http
        self._registry = registry
        self._ledger = ledger
        self._metrics = metrics
        self._auth_header = f"Bearer {internal_token}"
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=first_byte_timeout)

    async def complete(self, call: CompletionCall) -> Response[Any]:
        meter = Meter(call, self._ledger, self._metrics)
        try:
            worker = self._registry.pick(call.base_model_id, call.adapter_id)
        except ServiceUnavailable:
            meter.finish("unavailable", 503)
            raise
        meter.attach(worker)
        body = dict(call.body, model=call.served_model)
        if call.stream:
            body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
        try:
            upstream = await self._http.post(
                f"{worker.url}{call.upstream_path}",
                data=_json_encode(body),
                headers={"Authorization": self._auth_header, "Content-Type": "application/json",
                         "X-Request-Id": call.request_id},
                timeout=self._timeout,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._registry.mark_unready(worker)
            meter.finish("upstream_error", 503)
            log.warning("upstream_connect_failed", worker=worker.url, error=repr(exc))
            raise ServiceUnavailable("The inference worker could not be reached; retry the request.",
                                     code="worker_unreachable") from None
        except BaseException:
            meter.finish("client_disconnect", 499)
            raise
        if upstream.status != 200 or not call.stream:
            return await self._whole(call, meter, upstream)
        stream = SseRelay(call, meter, upstream)
        events = stream.events()
        return Stream(events, media_type="text/event-stream", headers=SSE_HEADERS,
                      background=BackgroundTask(stream.close, events))

    async def _whole(self, call: CompletionCall, meter: "Meter", upstream: aiohttp.ClientResponse) -> Response[Any]:
        try:
            payload = await upstream.read()
        except (aiohttp.ClientError, TimeoutError):
            upstream.close()
            meter.finish("upstream_error", 502)
            raise UpstreamFailed() from None
        except BaseException:
            upstream.close()
            meter.finish("client_disconnect", 499)
            raise
        upstream.release()
        if upstream.status != 200:
            status, envelope = _upstream_error_envelope(upstream.status, payload, call.public_model)
            meter.finish("upstream_error", status)
            return Response(envelope, status_code=status)
        try:
            document = _json_decode(payload)
        except msgspec.DecodeError:
            meter.finish("upstream_error", 502)
            raise UpstreamFailed() from None
        meter.observe_usage(document.get("usage"))
        meter.first_token()
        meter.finish("success", 200)
        return Response(_json_encode(_tidy(document, call.public_model)), media_type="application/json",
                        headers={COST_HEADER: str(meter.cost)})


class UpstreamFailed(LoraFleetError):
    status_code = 502
    default_code = "upstream_error"

    def __init__(self) -> None:
        super().__init__("The inference worker failed mid-response; retry the request.")


class Meter:
    """Token counts seen so far and the one ledger row they end up in."""

    def __init__(self, call: CompletionCall, ledger: LedgerWriter, metrics: GatewayMetrics) -> None:
        self.call = call
        self._ledger = ledger
        self._metrics = metrics
        self.worker: WorkerState | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.ttft: float | None = None
        self.finished = False

    def attach(self, worker: WorkerState) -> None:
        self.worker = worker
        worker.in_flight += 1

    def observe_usage(self, usage: dict[str, Any] | None) -> None:
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)

    @property
    def cost(self) -> int:
        call = self.call
        return cost_micro_usd(call.price, self.prompt_tokens, self.completion_tokens, adapter=call.adapter_id is not None)

    def first_token(self) -> None:
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.call.started
            kind = "base" if self.call.adapter_id is None else "adapter"
            self._metrics.ttft_seconds.labels(self.call.base_model_name, kind).observe(self.ttft)

    def finish(self, outcome: str, http_status: int) -> None:
        """Record the ledger row; synchronous so it runs even under cancellation, and only once."""
        if self.finished:
            return
        self.finished = True
        call = self.call
        if self.worker is not None:
            self.worker.in_flight -= 1
        duration = time.perf_counter() - call.started
        self._ledger.record(UsageRow(
            request_id=call.request_id, tenant_id=call.principal.tenant_id, api_key_id=call.principal.key_id,
            base_model_id=call.base_model_id, model=call.public_model, endpoint=call.endpoint, outcome=outcome,
            http_status=http_status, streamed=call.stream, prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens, worker_url=self.worker.url if self.worker else None,
            started_at=call.started_at, finished_at=call.started_at + dt.timedelta(seconds=duration),
            ttft_ms=None if self.ttft is None else round(self.ttft * 1000), duration_ms=round(duration * 1000),
            adapter_id=call.adapter_id, cost_micro_usd=self.cost, price_id=call.price.id if call.price else None,
        ))
        self._metrics.completions.labels(outcome).inc()
        self._metrics.tokens.labels("prompt").inc(self.prompt_tokens)
        self._metrics.tokens.labels("completion").inc(self.completion_tokens)
        call.log_entry.update(outcome=outcome, prompt_tokens=self.prompt_tokens,
                              completion_tokens=self.completion_tokens,
                              ttft_ms=None if self.ttft is None else round(self.ttft * 1000, 2),
                              worker=self.worker.url if self.worker else None)


class SseRelay:
    """Pass a worker's SSE stream through chunk by chunk, reshaping usage to what the client asked."""

    def __init__(self, call: CompletionCall, meter: Meter, upstream: aiohttp.ClientResponse) -> None:
        self._call = call
        self._meter = meter
        self._upstream = upstream
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
                log.warning("upstream_stream_failed", error=repr(exc), request_id=self._call.request_id)
                self._failed = True
            if not self._done:
                self._failed = True  # the worker closed the stream without [DONE]
            if self._failed and not self._error_forwarded:
                error = {"error": {"message": "The inference worker failed mid-stream; the output is incomplete.",
                                   "type": "server_error", "param": None, "code": "upstream_error"}}
                yield b"data: " + _json_encode(error) + b"\n\n"
        finally:
            # Also reached on cancellation (client gone): _finish never awaits.
            self._finish()

    def _reshape(self, event: bytes) -> bytes | None:
        data = b"".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
        if not data:
            return None
        if data == b"[DONE]":
            self._done = True
            return b"data: [DONE]\n\n"
        try:
            chunk = _json_decode(data)
        except msgspec.DecodeError:
            log.warning("upstream_bad_chunk", request_id=self._call.request_id)
            self._failed = True
            return None
        if "error" in chunk:
            self._failed = self._error_forwarded = True
            return b"data: " + data + b"\n\n"
        usage = chunk.get("usage")
        self._meter.observe_usage(usage)
        call = self._call
        if not chunk.get("choices"):
            # the trailing usage-only chunk, with the cost (headers left before it was known)
            if not (call.client_usage and usage):
                return None
            usage["cost_micro_usd"] = self._meter.cost
            return b"data: " + _json_encode(_tidy(chunk, call.public_model)) + b"\n\n"
        if self._meter.completion_tokens > 0 or any(_has_output(c) for c in chunk["choices"]):
            self._meter.first_token()
        if not call.client_usage:
            chunk.pop("usage", None)
        elif not call.client_continuous_usage:
            chunk["usage"] = None
        return b"data: " + _json_encode(_tidy(chunk, call.public_model)) + b"\n\n"

    def _finish(self) -> None:
        if self._meter.finished:
            return
        if self._done and not self._failed:
            self._upstream.release()
            self._meter.finish("success", 200)
        else:
            # Closing the connection is what makes vLLM abort the request.
            self._upstream.close()
            self._meter.finish("upstream_error" if self._failed else "client_disconnect", 200 if self._failed else 499)

    async def close(self, events: Any) -> None:
        """After the response: close the generator if the client left while it was suspended."""
        try:
            await events.aclose()
        finally:
            self._finish()


def _has_output(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    if delta is not None:
        return bool(delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"))
    return bool(choice.get("text"))
