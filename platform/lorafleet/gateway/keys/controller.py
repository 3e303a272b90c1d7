from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.di import Provide

from lorafleet.gateway.auth import Principal
from lorafleet.gateway.body import decode
from lorafleet.gateway.dependencies import provide_principal, provide_services
from lorafleet.gateway.keys.schemas import KeyCreate
from lorafleet.gateway.services import Services
from lorafleet.tenancy.service import ApiKeyView, CreatedApiKey, TenancyService


class KeysController(Controller):
    path = "/v1/keys"
    tags = ["Keys"]
    dependencies = {"principal": Provide(provide_principal), "services": Provide(provide_services)}

    @get("/", operation_id="listKeys", summary="The caller's tenant's API keys (secrets are never shown again).")
    async def list_keys(self, principal: Principal, services: Services) -> dict[str, Any]:
        principal.require("keys:read")
        keys = await TenancyService(services.pool).list_keys(principal.tenant_id)
        return {"object": "list", "data": keys, "has_more": False}

    @post("/", operation_id="createKey", status_code=201, summary="Create an API key; the secret is in this response only.")
    async def create_key(self, request: Request, principal: Principal, services: Services) -> CreatedApiKey:
        principal.require("keys:write")
        body = decode(await request.body(), KeyCreate)
        # A key never mints a key more powerful or longer-lived than itself.
        return await TenancyService(services.pool).create_key(
            principal.tenant_id, name=body.name, scopes=body.scopes, mode=body.mode, expires_at=body.expires_at,
            authority=principal.authority,
        )

    @delete("/{key_id:str}", operation_id="revokeKey", status_code=200, summary="Revoke a key, effective within a second everywhere.")
    async def revoke_key(self, key_id: str, principal: Principal, services: Services) -> ApiKeyView:
        principal.require("keys:write")
        return await TenancyService(services.pool).revoke_key(key_id, tenant_id=principal.tenant_id,
                                                              authority=principal.authority)
