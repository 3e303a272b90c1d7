"""``/v1/responses``: create (whole or streamed), retrieve, list input items, delete.

A response is served as a chat completion (bridge.py) through the same request path as chat:
admission, metering (endpoint ``responses``), routing, failover, adapters.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
import structlog
from litestar import Controller, Response, delete, get, post
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, Parameter
from lorafleet.gateway.body import StrictBody
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, TENANT_GUARDS, Caller, Context
from lorafleet.gateway.openai.bounds import chat_demand
from lorafleet.gateway.openai.completion import COMPLETION_ERRORS, run_completion
from lorafleet.gateway.openai.relay import COST_HEADER
from lorafleet.gateway.params import Limit
from lorafleet.gateway.responses import API_KEY, StreamingOperation, error_responses
from lorafleet.gateway.responses_api.bridge import (
    ResponseBuilder,
    chat_request,
    check_structured,
    function_tools,
    refuse_unsupported,
)
from lorafleet.gateway.responses_api.items import canonical_input
from lorafleet.gateway.responses_api.schemas import (
    DeletedResponse,
    InputItemList,
    ResponseCreateRequest,
    ResponseObject,
)
from lorafleet.gateway.responses_api.stream import ResponseEvents

log = structlog.get_logger("lorafleet.responses")
_encode = msgspec.json.Encoder().encode
ResponseIdPath = FromPath[str]


class ResponsesShaping:
    """How a chat answer reaches a Responses client: the object, or its typed events; stored when asked."""

    def __init__(self, builder: ResponseBuilder, save) -> None:
        self.builder = builder
        self.save = save

    def stream_shaper(self, meter) -> ResponseEvents:
        return ResponseEvents(self.builder, meter, self.save)

    async def whole(self, document: dict[str, Any], meter) -> Response[Any]:
        response = self.builder.from_chat(document, meter.cost)
        await self.save(response)
        return Response(_encode(response), media_type="application/json", headers={COST_HEADER: str(meter.cost)})


class ResponsesController(Controller):
    path = "/v1/responses"
    tags = ["OpenAI"]
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES

    @post("/", operation_id="createResponse", status_code=200, dto=StrictBody[ResponseCreateRequest], return_dto=None,
          operation_class=StreamingOperation,
          responses={200: ResponseSpec(ResponseObject, generate_examples=False,
                                       description="The response; with `stream: true`, its typed events instead."),
                     **COMPLETION_ERRORS},
          summary="Create a model response (OpenAI Responses API; text and function tools, streams with stream=true).")
    async def create(self, data: JSONBody[ResponseCreateRequest], context: Context, principal: Caller) -> Response[Any]:
        principal.require("inference")
        refuse_unsupported(data)
        tools = function_tools(data.tools)
        check_structured(data, tools)
        services = context.services
        resolved = await services.catalog.resolve(principal.tenant_id, data.model)
        input_items = canonical_input(data.input)
        history = (await services.responses.history(principal.tenant_id, data.previous_response_id)
                   if data.previous_response_id else [])
        chat = chat_request(data, history + input_items, tools)
        demand = chat_demand(chat, len(_encode(chat)), resolved.base.max_model_len,
                             max_sequences=services.settings.max_sequences_per_request)
        builder = ResponseBuilder(data, tools, public_model=data.model)
        tenant_id, key_id = principal.tenant_id, principal.key_id

        async def save(document: dict[str, Any]) -> None:
            if not data.store:
                return
            try:
                await services.responses.save(tenant_id, key_id, input_items, document)
            except Exception as exc:  # noqa: BLE001 - whatever fails here, the client has its answer
                # The answer is delivered (and billed); only reading it back or chaining from it fails.
                log.error("response_not_stored", response_id=document["id"], error=type(exc).__name__)

        return await run_completion(chat, demand, "responses", resolved, context, principal,
                                    shaping=ResponsesShaping(builder, save))

    @get("/{response_id:str}", operation_id="getResponse", return_dto=None,
         responses={200: ResponseSpec(ResponseObject, generate_examples=False, description="The stored response."),
                    **error_responses(400, 404, *API_KEY)},
         summary="A stored response (this key's tenant's own).")
    async def retrieve(self, response_id: ResponseIdPath, context: Context, principal: Caller) -> Response[Any]:
        principal.require("inference")
        document = await context.services.responses.get(principal.tenant_id, response_id)
        return Response(_encode(document), media_type="application/json")  # exactly as it was answered

    @get("/{response_id:str}/input_items", operation_id="listInputItems",
         responses=error_responses(400, 404, *API_KEY), summary="The input items a stored response was given.")
    async def input_items(self, response_id: ResponseIdPath, context: Context, principal: Caller, limit: Limit = 20,
                          after: str | None = Parameter(default=None, max_length=128),
                          order: str = Parameter(default="desc", pattern="^(asc|desc)$")) -> InputItemList:
        principal.require("inference")
        items = await context.services.responses.input_items(principal.tenant_id, response_id)
        if order == "desc":
            items = items[::-1]
        if after is not None:
            position = next((index for index, item in enumerate(items) if item.get("id") == after), None)
            items = items[position + 1:] if position is not None else []
        page = items[:limit]
        return InputItemList(data=page, first_id=page[0]["id"] if page else None,
                             last_id=page[-1]["id"] if page else None, has_more=len(items) > limit)

    @delete("/{response_id:str}", operation_id="deleteResponse", status_code=200,
            responses=error_responses(400, 404, *API_KEY), summary="Delete a stored response.")
    async def remove(self, response_id: ResponseIdPath, context: Context, principal: Caller) -> DeletedResponse:
        principal.require("inference")
        await context.services.responses.delete(principal.tenant_id, response_id)
        return DeletedResponse(id=response_id)
