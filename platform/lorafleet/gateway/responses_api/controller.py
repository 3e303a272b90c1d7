"""``/v1/responses``: create (whole or streamed), retrieve, list input items, delete.

A response is served as a chat completion (bridge.py) through the same request path as chat:
admission, metering (endpoint ``responses``), routing, failover, adapters (create.py). Reads of
stored responses count against the key's requests per minute.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, Parameter
from lorafleet.gateway.body import StrictBody
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, TENANT_GUARDS, AppServices, Caller, Context, scope
from lorafleet.gateway.error_specs import API_KEY, StreamingOperation, error_responses
from lorafleet.gateway.idempotency import IdempotencyKey
from lorafleet.gateway.openai.completion import COMPLETION_ERRORS
from lorafleet.gateway.openapi import TENANT_SECURITY
from lorafleet.gateway.params import Limit
from lorafleet.gateway.responses_api.create import create_response
from lorafleet.gateway.responses_api.schemas import (
    DeletedResponse,
    InputItemList,
    ResponseCreateRequest,
    ResponseObject,
)

ResponseIdPath = FromPath[str]


class ResponsesController(Controller):
    path = "/v1/responses"
    tags = ["OpenAI"]
    security = TENANT_SECURITY
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES

    @post("/", operation_id="createResponse", status_code=200, dto=StrictBody[ResponseCreateRequest], return_dto=None,
          operation_class=StreamingOperation,
          responses={200: ResponseSpec(ResponseObject, generate_examples=False,
                                       description="The response; with `stream: true`, its typed events instead."),
                     **COMPLETION_ERRORS, **error_responses(409)},
          summary="Create a model response (OpenAI Responses API; text and function tools, streams with stream=true).", opt=scope("inference", audit=False))
    async def create(self, request: Request, data: JSONBody[ResponseCreateRequest], context: Context, services: AppServices,
                     principal: Caller, idempotency_key: IdempotencyKey = None) -> Response[Any]:
        return await create_response(data, context, services, principal, authorization=request.headers.get("authorization"),
                                     idempotency_key=idempotency_key)

    @get("/{response_id:str}", operation_id="getResponse", return_dto=None,
         responses={200: ResponseSpec(ResponseObject, generate_examples=False, description="The stored response."),
                    **error_responses(400, 404, 429, *API_KEY)},
         summary="A stored response (this key's tenant's own).", opt=scope("inference"))
    async def retrieve(self, response_id: ResponseIdPath, services: AppServices, principal: Caller) -> Response[Any]:
        headers = await services.admission.admit_read(principal)
        document = await services.responses.get(principal.tenant_id, response_id)
        return Response(document, media_type="application/json", headers=headers)  # as it was answered

    @get("/{response_id:str}/input_items", operation_id="listInputItems",
         responses=error_responses(400, 404, 429, *API_KEY), summary="The input items a stored response was given.", opt=scope("inference"))
    async def input_items(self, response_id: ResponseIdPath, services: AppServices, principal: Caller, limit: Limit = 20,
                          after: str | None = Parameter(default=None, max_length=128),
                          order: str = Parameter(default="desc", pattern="^(asc|desc)$")) -> Response[InputItemList]:
        headers = await services.admission.admit_read(principal)
        page, has_more = await services.responses.input_items(
            principal.tenant_id, response_id, after=after, newest_first=order == "desc", limit=limit)
        return Response(InputItemList(data=page, first_id=page[0]["id"] if page else None,
                                      last_id=page[-1]["id"] if page else None, has_more=has_more),
                        headers=headers)

    @delete("/{response_id:str}", operation_id="deleteResponse", status_code=200,
            responses=error_responses(400, 404, *API_KEY), summary="Delete a stored response.", opt=scope("inference", audit="response.deleted"))
    async def remove(self, response_id: ResponseIdPath, services: AppServices, principal: Caller) -> DeletedResponse:
        await services.responses.delete(principal.tenant_id, response_id)
        return DeletedResponse(id=response_id)
