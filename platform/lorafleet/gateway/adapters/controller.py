from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.di import Provide
from litestar.params import Parameter

from lorafleet.adapters.service import AdapterView
from lorafleet.gateway.adapters.upload import upload_adapter
from lorafleet.gateway.auth import Principal
from lorafleet.gateway.dependencies import provide_principal, provide_services
from lorafleet.gateway.services import Services


class AdaptersController(Controller):
    path = "/v1/adapters"
    tags = ["Adapters"]
    dependencies = {"principal": Provide(provide_principal), "services": Provide(provide_services)}

    @post("/", operation_id="createAdapter", status_code=201,
          summary="Upload a PEFT LoRA adapter (multipart: name, optional base_model, files or one archive).")
    async def create_adapter(self, request: Request, principal: Principal, services: Services) -> AdapterView:
        principal.require("adapters:write")
        return await upload_adapter(request, principal.tenant_id, services.adapters)

    @get("/", operation_id="listAdapters", summary="The caller's adapters, oldest id first.")
    async def list_adapters(
        self, principal: Principal, services: Services,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 100, starting_after: str | None = None,
    ) -> dict[str, Any]:
        principal.require("adapters:read")
        adapters, has_more = await services.adapters.list(principal.tenant_id, after=starting_after, limit=limit)
        return {"object": "list", "data": adapters, "has_more": has_more}

    @get("/{adapter_id:str}", operation_id="getAdapter", summary="One of the caller's adapters.")
    async def get_adapter(self, adapter_id: str, principal: Principal, services: Services) -> AdapterView:
        principal.require("adapters:read")
        return await services.adapters.get(principal.tenant_id, adapter_id)

    @delete("/{adapter_id:str}", operation_id="deleteAdapter", status_code=200,
            summary="Delete an adapter: unloaded from every worker, never served again.")
    async def delete_adapter(self, adapter_id: str, principal: Principal, services: Services) -> AdapterView:
        principal.require("adapters:write")
        deleted = await services.adapters.delete(principal.tenant_id, adapter_id)
        await services.registry.unload_adapter(adapter_id)
        return deleted
