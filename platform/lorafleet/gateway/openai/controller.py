"""``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``: the request path, in order.

A completion goes: typed body (StrictBody) → principal (dependencies.py) → model resolved
(fleet/catalog.py) → default output cap (output_cap.py), what the engine would refuse, worst case and fan-out
(gateway/preflight.py, bounds.py) → admission (metering/admission.py) →
meter → worker chosen and called, with failover (relay.py) → ledger row (metering/meter.py).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody
from lorafleet.billing.ledger_row import Endpoint
from lorafleet.gateway import preflight
from lorafleet.gateway.body import StrictBody
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, TENANT_GUARDS, AppServices, Caller, Context, scope
from lorafleet.gateway.error_specs import API_KEY, StreamingOperation, error_responses
from lorafleet.gateway.fleet.catalog import sticky_key, version_headers
from lorafleet.gateway.openai.completion import COMPLETION_ERRORS, run_completion
from lorafleet.gateway.openai.models import (
    DeletedModel,
    Model,
    ModelList,
    delete_model,
    list_models,
    retrieve_model,
)
from lorafleet.gateway.openai.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    TextCompletion,
)
from lorafleet.gateway.openapi import TENANT_SECURITY

STREAMS = "The completion; with `stream: true`, server-sent events instead."


class OpenAIController(Controller):
    path = "/v1"
    tags = ["OpenAI"]
    security = TENANT_SECURITY
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES

    @post("/chat/completions", operation_id="createChatCompletion", status_code=200,
          dto=StrictBody[ChatCompletionRequest], return_dto=None, operation_class=StreamingOperation,
          responses={200: ResponseSpec(ChatCompletion, description=STREAMS, generate_examples=False), **COMPLETION_ERRORS},
          summary="Create a chat completion (OpenAI-compatible; streams with stream=true).", opt=scope("inference", audit=False))
    async def chat_completions(self, request: Request, data: JSONBody[ChatCompletionRequest], context: Context, services: AppServices,
                               principal: Caller) -> Response[Any]:
        preflight.before_model(data)
        resolved = await services.catalog.resolve(principal.tenant_id, data.model, sticky_key(request, data.user))
        context.response_headers += version_headers(resolved)
        prepared = preflight.chat(data, len(await request.body()), resolved, services.settings)
        return await run_completion(prepared.request, prepared.demand, Endpoint.CHAT_COMPLETIONS, resolved, context,
                                    services, principal)

    @post("/completions", operation_id="createCompletion", status_code=200,
          dto=StrictBody[CompletionRequest], return_dto=None, operation_class=StreamingOperation,
          responses={200: ResponseSpec(TextCompletion, description=STREAMS, generate_examples=False), **COMPLETION_ERRORS},
          summary="Create a text completion (OpenAI-compatible; streams with stream=true).", opt=scope("inference", audit=False))
    async def completions(self, request: Request, data: JSONBody[CompletionRequest], context: Context, services: AppServices,
                          principal: Caller) -> Response[Any]:
        preflight.before_model(data)
        resolved = await services.catalog.resolve(principal.tenant_id, data.model, sticky_key(request, data.user))
        context.response_headers += version_headers(resolved)
        prepared = preflight.completion(data, resolved, services.settings)
        return await run_completion(prepared.request, prepared.demand, Endpoint.COMPLETIONS, resolved, context,
                                    services, principal)

    @get("/models", operation_id="listModels", responses=error_responses(*API_KEY), summary="Models this key can call: base models and its adapters.", opt=scope("inference"))
    async def list_models(self, services: AppServices, principal: Caller) -> ModelList:
        return await list_models(services, principal.tenant_id)

    @get("/models/{model_id:path}", operation_id="retrieveModel", responses=error_responses(400, 404, *API_KEY),
         summary="One model: a base model, or one of this key's adapters (`name` or `base:name`).", opt=scope("inference"))
    async def retrieve_model(self, model_id: FromPath[str], services: AppServices, principal: Caller) -> Model:
        return await retrieve_model(services, principal.tenant_id, model_id.lstrip("/"))

    @delete("/models/{model_id:path}", operation_id="deleteModel", status_code=200,
            responses=error_responses(400, 404, *API_KEY),
            summary="Delete one of this key's models: a fine-tuned model (`ft:…`) or an adapter (base models: 404).",
            opt=scope("adapters:write", audit="model.deleted"))
    async def delete_model(self, model_id: FromPath[str], context: Context, services: AppServices,
                           principal: Caller) -> DeletedModel:
        return await delete_model(context, services, principal.tenant_id, model_id.lstrip("/"))
