"""``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``: the request path, in order.

A completion goes: typed body (StrictBody) → principal (dependencies.py) → model resolved
(fleet/catalog.py) → worst case and fan-out (bounds.py) → admission (metering/admission.py) →
meter → worker chosen and called, with failover (relay.py) → ledger row (metering/meter.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, JSONBody
from lorafleet.gateway.auth import Principal
from lorafleet.gateway.body import StrictBody
from lorafleet.gateway.context import RequestContext
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, Caller, Context
from lorafleet.gateway.fleet.catalog import ResolvedModel
from lorafleet.gateway.metering.admission import Demand
from lorafleet.gateway.metering.meter import Billable, Meter
from lorafleet.gateway.openai.bounds import chat_demand, completion_demand
from lorafleet.gateway.openai.forwarding import dropped_fields, upstream_body
from lorafleet.gateway.openai.models import (
    Model,
    ModelList,
    list_models,
    retrieve_model,
)
from lorafleet.gateway.openai.relay import UpstreamCall
from lorafleet.gateway.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    _Sampling,
)


class OpenAIController(Controller):
    path = "/v1"
    tags = ["OpenAI"]
    dependencies = TENANT_DEPENDENCIES

    @post("/chat/completions", operation_id="createChatCompletion", status_code=200,
          dto=StrictBody[ChatCompletionRequest], return_dto=None,
          summary="Create a chat completion (OpenAI-compatible; streams with stream=true).")
    async def chat_completions(self, request: Request, data: JSONBody[ChatCompletionRequest], context: Context,
                               principal: Caller) -> Response[Any]:
        principal.require("inference")
        settings = context.services.settings
        resolved = await context.services.catalog.resolve(principal.tenant_id, data.model)
        demand = chat_demand(data, len(await request.body()), resolved.base.max_model_len,
                             max_sequences=settings.max_sequences_per_request)
        return await _complete(data, demand, "chat.completions", "/v1/chat/completions", resolved, context, principal)

    @post("/completions", operation_id="createCompletion", status_code=200,
          dto=StrictBody[CompletionRequest], return_dto=None,
          summary="Create a text completion (OpenAI-compatible; streams with stream=true).")
    async def completions(self, data: JSONBody[CompletionRequest], context: Context, principal: Caller) -> Response[Any]:
        principal.require("inference")
        settings = context.services.settings
        resolved = await context.services.catalog.resolve(principal.tenant_id, data.model)
        demand = completion_demand(data, resolved.base.max_model_len, max_prompts=settings.max_prompts_per_request,
                                   max_sequences=settings.max_sequences_per_request)
        return await _complete(data, demand, "completions", "/v1/completions", resolved, context, principal)

    @get("/models", operation_id="listModels", summary="Models this key can call: base models and its adapters.")
    async def list_models(self, context: Context, principal: Caller) -> ModelList:
        principal.require("inference")
        return await list_models(context.services, principal.tenant_id)

    @get("/models/{model_id:path}", operation_id="retrieveModel",
         summary="One model: a base model, or one of this key's adapters (`name` or `base:name`).")
    async def retrieve_model(self, model_id: FromPath[str], context: Context, principal: Caller) -> Model:
        principal.require("inference")
        return await retrieve_model(context.services, principal.tenant_id, model_id.lstrip("/"))


async def _complete(data: _Sampling, demand: Demand, endpoint: str, path: str, resolved: ResolvedModel,
                    context: RequestContext, principal: Principal) -> Response[Any]:
    services = context.services
    context.model = data.model
    started_at = dt.datetime.now(dt.UTC)
    price = services.catalog.prices.at(resolved.base.id, started_at)
    billable = Billable(started_at=started_at, request_id=context.request_id, tenant_id=principal.tenant_id, api_key_id=principal.key_id,
                        base_model_id=resolved.base.id, base_model_name=resolved.base.name, model=data.model,
                        adapter_id=resolved.adapter_id, endpoint=endpoint, streamed=data.stream, price=price)
    admitted = await services.admission.admit(principal, context.request_id, demand, price,
                                              adapter=resolved.adapter_id is not None)
    meter = Meter(billable, services.ledger, services.metrics, context)
    meter.on_finish(admitted.release)
    dropped = dropped_fields(data)
    context.dropped_fields = dropped
    call = UpstreamCall(
        context=context, meter=meter, path=path,
        body=upstream_body(data, resolved.served_name, services.cache_salts.salt(principal.tenant_id), dropped),
        stream=data.stream, public_model=data.model, client_usage=data.client_usage,
        client_continuous_usage=data.client_continuous_usage,
    )
    try:
        response = await services.relay.complete(call)
    except BaseException:
        # The relay settles every path it knows; this keeps a bug from holding a reservation.
        meter.finish("upstream_error", 500)
        raise
    response.headers.update(admitted.headers)
    return response
