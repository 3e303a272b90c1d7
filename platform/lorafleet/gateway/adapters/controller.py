"""Tenant self-service adapters: ``/v1/adapters``."""

from __future__ import annotations

from dataclasses import dataclass

from litestar import Controller, Request, delete, get, post
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.params import FromPath
from lorafleet.adapters.service import AdapterView
from lorafleet.core.types import ADAPTER_NAME_PATTERN, Page
from lorafleet.gateway.adapters.operations import delete_adapter, upload_adapter
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, TENANT_GUARDS, AppServices, Caller, Context, scope
from lorafleet.gateway.error_specs import API_KEY, error_responses
from lorafleet.gateway.idempotency import IdempotencyKey
from lorafleet.gateway.openapi import TENANT_SECURITY
from lorafleet.gateway.params import Limit, StartingAfter

_UPLOAD_SCHEMA = Schema(
    type=OpenAPIType.OBJECT, required=["name", "file"],
    properties={
        "name": Schema(type=OpenAPIType.STRING, pattern=ADAPTER_NAME_PATTERN, description="The adapter's name."),
        "base_model": Schema(type=OpenAPIType.STRING, description="Default: the served base model the config's "
                                                                  "base_model_name_or_path names, else the only one."),
        "prewarm": Schema(type=OpenAPIType.STRING, enum=["none", "disk", "load"],
                          description="Fetch it onto a worker's disk (disk) or into its engine (load) at once."),
        "file": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.STRING, format="binary"), min_items=1,
                       description="adapter_config.json and adapter_model.safetensors, or one .tar.gz/.tgz/.tar/.zip"),
    })


@dataclass
class MultipartUploadOperation(Operation):
    """The upload streams to disk as it arrives, so Litestar does not parse it: its schema is declared here."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(required=True, content={
            "multipart/form-data": OpenAPIMediaType(schema=_UPLOAD_SCHEMA)})


class AdaptersController(Controller):
    path = "/v1/adapters"
    tags = ["Adapters"]
    security = TENANT_SECURITY
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES

    @post("/", operation_id="createAdapter", status_code=201, operation_class=MultipartUploadOperation,
          responses=error_responses(400, 409, 413, 415, *API_KEY),
          summary="Upload a PEFT LoRA adapter (multipart: name, optional base_model and prewarm, files or one archive).", opt=scope("adapters:write", audit="adapter.created"))
    async def create_adapter(self, request: Request, context: Context, services: AppServices, principal: Caller,
                             idempotency_key: IdempotencyKey = None) -> AdapterView:
        return await upload_adapter(request, context, services, principal.tenant_id, owner=principal.key_id,
                                    idempotency_key=idempotency_key)

    @get("/", operation_id="listAdapters", responses=error_responses(400, *API_KEY),
         summary="The caller's adapters, oldest id first.", opt=scope("adapters:read"))
    async def list_adapters(self, services: AppServices, principal: Caller, limit: Limit = 100,
                            starting_after: StartingAfter = None) -> Page[AdapterView]:
        return await services.adapters.list(principal.tenant_id, after=starting_after, limit=limit)

    @get("/{adapter_id:str}", operation_id="getAdapter", responses=error_responses(400, 404, *API_KEY),
         summary="One of the caller's adapters.", opt=scope("adapters:read"))
    async def get_adapter(self, adapter_id: FromPath[str], services: AppServices, principal: Caller) -> AdapterView:
        return await services.adapters.get(principal.tenant_id, adapter_id)

    @delete("/{adapter_id:str}", operation_id="deleteAdapter", status_code=200,
            responses=error_responses(400, 404, *API_KEY),
            summary="Delete an adapter: unloaded from every worker, never served again.", opt=scope("adapters:write", audit="adapter.deleted"))
    async def delete_adapter(self, adapter_id: FromPath[str], context: Context, services: AppServices, principal: Caller) -> AdapterView:
        return await delete_adapter(context, services, principal.tenant_id, adapter_id)

