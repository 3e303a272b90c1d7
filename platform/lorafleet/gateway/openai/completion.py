"""One inference request, from a validated body to the answer: the path chat, completions, responses and
embeddings share.

Price → admission (budget, limits) → meter → upstream body (served name, cache salt) → relay
(placement, failover, hold while a worker wakes) → the answer, shaped for the route → ledger row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Response
from lorafleet.billing.ledger_row import Endpoint, Outcome
from lorafleet.core.errors import LoraFleetError
from lorafleet.gateway.auth import Principal
from lorafleet.gateway.context import RequestContext
from lorafleet.gateway.error_specs import API_KEY, error_responses
from lorafleet.gateway.fleet.catalog import ResolvedModel, require_task
from lorafleet.gateway.metering.admission import Demand
from lorafleet.gateway.metering.meter import Billable, Meter
from lorafleet.gateway.openai.forwarding import dropped_fields, upstream_body, with_priority
from lorafleet.gateway.openai.relay import ChatShaping, Shaping, UpstreamCall
from lorafleet.gateway.openai.schemas import _Sampling
from lorafleet.gateway.services import Services

COMPLETION_ERRORS = error_responses(400, 402, 404, 413, 429, 502, 503, *API_KEY)
WORKER_PATHS = {Endpoint.CHAT_COMPLETIONS: "/v1/chat/completions", Endpoint.COMPLETIONS: "/v1/completions",
                Endpoint.RESPONSES: "/v1/chat/completions",  # served as chat (responses_api/bridge.py)
                Endpoint.EMBEDDINGS: "/v1/embeddings"}


async def run_completion(data: _Sampling, demand: Demand, endpoint: Endpoint, resolved: ResolvedModel,
                         context: RequestContext, services: Services, principal: Principal, *, shaping: Shaping | None = None) -> Response[Any]:
    """A generation request (chat, completions, responses) on a generative model."""
    require_task(resolved, "generate", data.model)
    dropped = dropped_fields(data)
    context.dropped_fields = dropped
    body = upstream_body(data, resolved.served_name, services.cache_salts.salt(principal.tenant_id), dropped)
    shaping = shaping or ChatShaping(data.model, client_usage=data.client_usage,
                                     client_continuous_usage=data.client_continuous_usage)
    return await run_admitted(endpoint, data.model, data.stream, body, demand, resolved, context, services, principal, shaping)


async def run_admitted(endpoint: Endpoint, public_model: str, stream: bool, body: bytes | Callable[[], Awaitable[bytes]],
                       demand: Demand, resolved: ResolvedModel, context: RequestContext, services: Services, principal: Principal,
                       shaping: Shaping) -> Response[Any]:
    """Admit the request, send ``body`` to a worker and meter it: exactly one ledger row, whatever happens.

    ``body`` may be built only once the request is admitted (a Responses chain is walked then, so a
    refused key makes the gateway read nothing); ``demand`` must bound what it builds.
    """
    context.model = public_model
    started_at = dt.datetime.now(dt.UTC)
    price = services.catalog.prices.at(resolved.base.id, started_at)
    batch_id = context.batch.batch_id if context.batch is not None else None
    billable = Billable(started_at=started_at, request_id=context.request_id, tenant_id=principal.tenant_id,
                        api_key_id=principal.key_id, base_model_id=resolved.base.id, base_model_name=resolved.base.name,
                        model=public_model, adapter_id=resolved.adapter_id, endpoint=endpoint, streamed=stream,
                        price=price, batch_id=batch_id)
    admitted = await services.admission.admit(principal, context.request_id, demand, price,
                                              adapter=resolved.adapter_id is not None, batch=batch_id is not None)
    meter = Meter(billable, services.ledger, services.metrics)
    meter.on_finish(admitted.release)
    meter.on_finish(lambda: _settle(context, meter))
    if callable(body):
        try:
            body = await body()
        except LoraFleetError as error:
            meter.finish(Outcome.UPSTREAM_ERROR, error.status_code)  # settles the reservation: nothing ran, nothing billed
            raise
        except BaseException:
            meter.finish(Outcome.UPSTREAM_ERROR, 500)
            raise
    if batch_id is not None:
        body = with_priority(body, services.settings.batch_engine_priority)
    call = UpstreamCall(context=context, meter=meter, path=WORKER_PATHS[endpoint], body=body, stream=stream,
                        public_model=public_model, shaping=shaping)
    try:
        response = await services.relay.complete(call)
    except BaseException:
        # The relay settles every path it knows; this keeps a bug from holding a reservation.
        meter.finish(Outcome.UPSTREAM_ERROR, 500)
        raise
    response.headers.update(admitted.headers)
    return response


def _settle(context: RequestContext, meter: Meter) -> None:
    """The request's log line gets what its ledger row says."""
    row = meter.row
    if row is not None:
        context.settle(row.outcome, row.prompt_tokens, row.completion_tokens,
                       None if meter.ttft is None else round(meter.ttft * 1000, 2))
