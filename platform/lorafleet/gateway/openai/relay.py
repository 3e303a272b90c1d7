"""Send an admitted request to a worker, fail over before the first byte, and meter it exactly once.

Workers are tried in placement's order (fleet/registry.py). A connection that fails or a 5xx
before anything was received is retried on the next worker — or, with one worker, again on a
fresh connection (a pooled connection the worker closed while idle fails that way) — up to
``attempts`` tries; the request still has one ledger row, whatever the number of tries. Once the
first byte has arrived the worker is committed: a failure mid-stream ends the client's stream with
an error event (sse.py) and the ledger keeps the tokens delivered.

Upstream errors become the hierarchy's: the engine refusing a request on its merits is the
client's 4xx with the engine's message; a worker that cannot answer is 503 (nothing tried could
connect) or 502 (it answered wrongly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import structlog
from litestar import Response
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream
from lorafleet.core.errors import (
    EngineRejected,
    LoraFleetError,
    PayloadTooLarge,
    ServiceUnavailable,
    UpstreamError,
)
from lorafleet.gateway.context import RequestContext
from lorafleet.gateway.fleet.catalog import not_found
from lorafleet.gateway.fleet.registry import WorkerRegistry
from lorafleet.gateway.metering.meter import Meter
from lorafleet.gateway.metrics import GatewayMetrics
from lorafleet.gateway.openai.sse import SseRelay, tidy

log = structlog.get_logger("lorafleet.relay")

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
COST_HEADER = "x-lorafleet-cost-micro-usd"  # what this response costs the tenant, integer micro-USD
# Shorter than the worker's keep-alive (worker/engine.py): the gateway closes idle connections first.
UPSTREAM_KEEPALIVE_SECONDS = 30.0


@dataclass(slots=True)
class UpstreamCall:
    """One admitted request, ready to send."""

    context: RequestContext
    meter: Meter
    path: str                      # the worker's route, e.g. /v1/chat/completions
    body: bytes
    stream: bool
    public_model: str              # what the client named, echoed in responses
    client_usage: bool
    client_continuous_usage: bool


def upstream_connector() -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=UPSTREAM_KEEPALIVE_SECONDS)


class Relay:
    def __init__(self, http: aiohttp.ClientSession, registry: WorkerRegistry, metrics: GatewayMetrics,
                 internal_token: str, first_byte_timeout: float, attempts: int = 3) -> None:
        self._http = http
        # Retries never reuse a pooled connection: the one that just failed may have had company.
        self._fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), auto_decompress=False)
        self._registry = registry
        self._metrics = metrics
        self._auth_header = f"Bearer {internal_token}"
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=first_byte_timeout)
        self._attempts = attempts

    async def close(self) -> None:
        await self._fresh.close()

    async def complete(self, call: UpstreamCall) -> Response[Any]:
        meter = call.meter
        billable = meter.billable
        try:
            ranked = self._registry.ranked(billable.base_model_id, billable.adapter_id)
        except ServiceUnavailable:
            meter.finish("unavailable", 503)
            raise
        headers = {"Authorization": self._auth_header, "Content-Type": "application/json",
                   "X-Request-Id": billable.request_id}
        failure: LoraFleetError = ServiceUnavailable("The inference worker could not be reached; retry the request.",
                                                     code="worker_unreachable")
        for attempt in range(self._attempts):
            worker = ranked[attempt % len(ranked)]
            call.context.attempts = attempt + 1
            if attempt:
                self._metrics.upstream_retries.inc()
            release = worker.take(billable.adapter_id)
            session = self._fresh if attempt else self._http
            try:
                upstream = await session.post(f"{worker.url}{call.path}", data=call.body, headers=headers,
                                              timeout=self._timeout)
            except (aiohttp.ClientError, TimeoutError) as exc:
                release()
                self._registry.report_failure(worker)
                log.warning("upstream_connect_failed", worker=worker.id, attempt=attempt + 1, error=repr(exc)[:300])
                continue
            except BaseException:
                release()
                meter.finish("client_disconnect", 499)
                raise
            if upstream.status >= 500:
                upstream.close()  # a worker failing before the first byte: the next one may not
                release()
                self._registry.report_failure(worker)
                log.warning("upstream_failed", worker=worker.id, attempt=attempt + 1, status=upstream.status)
                failure = UpstreamError("The inference worker failed to answer; retry the request.")
                continue
            self._registry.report_success(worker)
            meter.on_finish(release)
            meter.worker_url = worker.url
            call.context.worker = worker.id
            if upstream.status != 200 or not call.stream:
                return await self._whole(call, upstream)
            relay = SseRelay(meter, upstream, call.public_model, client_usage=call.client_usage,
                             client_continuous_usage=call.client_continuous_usage, request_id=billable.request_id)
            events = relay.events()
            return Stream(events, media_type="text/event-stream", headers=SSE_HEADERS,
                          background=BackgroundTask(relay.closer(events)))
        meter.finish("upstream_error", failure.status_code)
        raise failure

    async def _whole(self, call: UpstreamCall, upstream: aiohttp.ClientResponse) -> Response[Any]:
        meter = call.meter
        try:
            payload = await upstream.read()
        except (aiohttp.ClientError, TimeoutError):
            upstream.close()
            meter.finish("upstream_error", 502)
            raise UpstreamError("The inference worker failed mid-response; retry the request.") from None
        except BaseException:
            upstream.close()
            meter.finish("client_disconnect", 499)
            raise
        upstream.release()
        if upstream.status != 200:
            error = engine_error(upstream.status, payload, call.public_model)
            meter.finish("upstream_error", error.status_code)
            raise error
        try:
            document = _decode(payload)
        except msgspec.DecodeError:
            meter.finish("upstream_error", 502)
            raise UpstreamError("The inference worker answered with something that is not JSON.") from None
        meter.observe_usage(document.get("usage"))
        meter.first_token()
        meter.finish("success", 200)
        return Response(_encode(tidy(document, call.public_model)), media_type="application/json",
                        headers={COST_HEADER: str(meter.cost)})


def engine_error(status: int, payload: bytes, public_model: str) -> LoraFleetError:
    """A worker's 4xx in the client's terms; anything else it says is hidden behind a 502."""
    if status == 404:
        # The worker no longer knows the model (an adapter deleted a moment ago): never the adp_ id.
        return not_found(public_model)
    if status == 413:
        return PayloadTooLarge("The request is larger than the engine accepts.")
    if 400 <= status < 500 and status not in (401, 403):
        try:
            error = _decode(payload).get("error") or {}
            message = str(error.get("message") or "The engine rejected the request.")[:2000]
            param = error.get("param") if isinstance(error.get("param"), str) else None
        except (msgspec.DecodeError, AttributeError):
            message, param = "The engine rejected the request.", None
        return EngineRejected(message, param=param)
    return UpstreamError("The inference worker failed to answer; retry the request.")

