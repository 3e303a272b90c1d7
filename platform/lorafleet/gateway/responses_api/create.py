"""``POST /v1/responses``: one response, from a validated request to its answer, stored when asked.

In order: the model; an ``Idempotency-Key`` claimed (or its first answer replayed, as events when the
request streams); the turn a ``previous_response_id`` continues, from its row alone; room to store it
(refused up front when the tenant has none); admission — and only then the chain is read, so an
over-budget or rate-limited key makes the gateway read nothing; the chat request to a worker (bridge.py);
the answer, stored (or marked ``store: false`` when it does not fit) and kept for the key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from litestar import Response
from lorafleet.billing.ledger_row import Endpoint
from lorafleet.gateway import preflight
from lorafleet.gateway.auth import Principal, bearer_secret
from lorafleet.gateway.context import RequestContext
from lorafleet.gateway.fleet.catalog import ResolvedModel, require_task, version_headers
from lorafleet.gateway.idempotency import REPLAY_HEADER, Claim, Replayed, claim, fingerprint
from lorafleet.gateway.openai.completion import run_admitted
from lorafleet.gateway.openai.forwarding import dropped_fields, upstream_body
from lorafleet.gateway.openai.output_cap import default_max_tokens, with_output_cap
from lorafleet.gateway.openai.relay import COST_HEADER, SSE_HEADERS
from lorafleet.gateway.responses_api.bridge import ResponseBuilder, chat_request
from lorafleet.gateway.responses_api.schemas import ResponseCreateRequest
from lorafleet.gateway.responses_api.store import ChainHead
from lorafleet.gateway.responses_api.stream import ResponseEvents, replayed_events
from lorafleet.gateway.services import Services

log = structlog.get_logger("lorafleet.responses")
_encode = msgspec.json.Encoder().encode


class ResponsesShaping:
    """How a chat answer reaches a Responses client: the object, or its typed events; then ``finished``
    (stored when asked, kept for an Idempotency-Key) before the client sees the end."""

    def __init__(self, builder: ResponseBuilder, finished: Callable[[dict[str, Any]], Awaitable[None]],
                 on_meter: Callable[[Any], None] | None = None) -> None:
        self.builder = builder
        self.finished = finished
        self._on_meter = on_meter

    def stream_shaper(self, meter) -> ResponseEvents:
        if self._on_meter is not None:
            self._on_meter(meter)
        return ResponseEvents(self.builder, meter, self.finished)

    async def whole(self, document: dict[str, Any], meter) -> Response[Any]:
        response = self.builder.from_chat(document, meter.cost)
        await self.finished(response)
        return Response(_encode(response), media_type="application/json", headers={COST_HEADER: str(meter.cost)})


async def create_response(data: ResponseCreateRequest, context: RequestContext, services: Services, principal: Principal, *,
                          authorization: str | None, idempotency_key: str | None) -> Response[Any]:
    read = preflight.before_model(data)  # before admission: what the engine's grammar compiler would read
    assert read is not None
    resolved = await services.catalog.resolve(principal.tenant_id, data.model, data.user)  # user: the sticky key
    require_task(resolved, "generate", data.model)
    tools, input_items = read.tools, read.items
    claimed: Claim | None = None
    if idempotency_key is not None:  # first: a retry is answered even once the first filled the quota
        begun = await claim(services.pool, owner=principal.key_id,
                            secret=bearer_secret(authorization), key=idempotency_key,
                            request_fingerprint=fingerprint(f"{context.method} {context.path}", data),
                            result_type=dict[str, Any])
        if isinstance(begun, Replayed):
            return await _replay(begun.result, data.stream, context, services, principal)
        claimed = begun
    context.response_headers += version_headers(resolved)  # not on a replay: that answer may be another version's
    try:
        store = services.responses
        # The turn this one continues, from its row alone: the chain itself is read once admitted.
        chain = (await store.head(principal.tenant_id, data.previous_response_id)
                 if data.previous_response_id else None)
        builder = ResponseBuilder(data, tools, public_model=data.model)
        if data.store:  # a full account is refused before anything runs or is billed
            await store.check_room(principal.tenant_id, input_items,
                                   builder.document(status="in_progress", output=[], usage=None))
        return await _run(data, read, chain, builder, resolved, context, services, principal, claimed)
    except BaseException:
        if claimed is not None:
            await claimed.release()
        raise


async def _run(data: ResponseCreateRequest, read: preflight.ResponsesInput, chain: ChainHead | None,
               builder: ResponseBuilder, resolved: ResolvedModel, context: RequestContext, services: Services, principal: Principal,
               claimed: Claim | None) -> Response[Any]:
    tools, input_items = read.tools, read.items
    max_model_len = resolved.base.max_model_len
    cap = default_max_tokens(services.settings.default_max_output_tokens, max_model_len)
    # Bounded before admission from the chain's recorded size (store.py: each turn's turn_bytes bounds what
    # replaying it renders); a chain stored before sizes were kept is bounded by the whole context.
    history_bound = 0 if chain is None else (chain.history_bytes if chain.history_bytes is not None else max_model_len)
    prepared = preflight.response_turn(data, read, resolved, services.settings, history_bound=history_bound)
    this_turn, demand = prepared.request, prepared.demand
    dropped = dropped_fields(this_turn)
    context.dropped_fields = dropped
    salt = services.cache_salts.salt(principal.tenant_id)

    async def body() -> bytes:  # once admitted: an over-budget or rate-limited key walks nothing
        chat = this_turn
        if chain is not None:
            history = await services.responses.history(principal.tenant_id, chain.response_id)
            chat = with_output_cap(chat_request(data, history + input_items, tools), cap)
        return upstream_body(chat, resolved.served_name, salt, dropped)

    tenant_id, key_id = principal.tenant_id, principal.key_id

    async def finished(document: dict[str, Any]) -> None:
        if data.store:
            stored = False
            try:
                stored = await services.responses.save(tenant_id, key_id, input_items, document, chain)
                if not stored:
                    log.warning("response_not_stored", response_id=document["id"], reason="storage_quota_exceeded")
            except Exception as exc:  # noqa: BLE001 - whatever fails here, the client has its answer
                # The answer is delivered (and billed); only reading it back or chaining from it fails.
                log.error("response_not_stored", response_id=document["id"], error=type(exc).__name__)
            if not stored:
                document["store"] = False  # the client sees it was not kept
        if claimed is not None:
            await claimed.complete(document)

    def on_meter(meter) -> None:
        if claimed is not None:
            # A stream that ends without a finished response (failed, client gone) gives its key back.
            meter.on_finish(lambda: None if claimed.settled else _background(claimed.release()))

    shaping = ResponsesShaping(builder, finished, on_meter)
    return await run_admitted(Endpoint.RESPONSES, data.model, data.stream, body, demand, resolved, context, services, principal,
                              shaping)


async def _replay(document: dict[str, Any], stream: bool, context: RequestContext, services: Services,
                  principal: Principal) -> Response[Any]:
    """The first request's answer again (a read: it counts against the key's requests per minute)."""
    headers = await services.admission.admit_read(principal)
    context.response_headers.append(REPLAY_HEADER)
    cost = (document.get("usage") or {}).get("cost_micro_usd")
    if cost is not None:
        headers[COST_HEADER] = str(cost)
    if stream:
        return Response(replayed_events(document), media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
    return Response(_encode(document), media_type="application/json", headers=headers)


_background_tasks: set[asyncio.Task[None]] = set()


def _background(work: Awaitable[None]) -> None:
    task = asyncio.ensure_future(work)
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)
