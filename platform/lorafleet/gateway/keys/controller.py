"""Tenant self-service API keys: ``/v1/keys``."""

from __future__ import annotations

from litestar import Controller, Request, delete, get, post
from litestar.params import FromPath, JSONBody
from lorafleet.core.types import Page
from lorafleet.gateway.body import StrictBody
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, TENANT_GUARDS, AppServices, Caller, Context, scope
from lorafleet.gateway.error_specs import API_KEY, error_responses
from lorafleet.gateway.idempotency import IdempotencyKey, once
from lorafleet.gateway.keys.schemas import KeyCreate
from lorafleet.gateway.openapi import TENANT_SECURITY
from lorafleet.gateway.params import Limit, StartingAfter
from lorafleet.tenancy.service import ApiKeyView, CreatedApiKey, TenancyService


class KeysController(Controller):
    path = "/v1/keys"
    tags = ["Keys"]
    security = TENANT_SECURITY
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES

    @get("/", operation_id="listKeys", responses=error_responses(400, *API_KEY),
         summary="The caller's tenant's API keys, oldest first (secrets are never shown again).", opt=scope("keys:read"))
    async def list_keys(self, services: AppServices, principal: Caller, limit: Limit = 100,
                        starting_after: StartingAfter = None) -> Page[ApiKeyView]:
        return await TenancyService(services.pool).list_keys(principal.tenant_id, after=starting_after,
                                                                     limit=limit)

    @post("/", operation_id="createKey", status_code=201, dto=StrictBody[KeyCreate], return_dto=None,
          responses=error_responses(400, 409, 413, *API_KEY),
          summary="Create an API key within this key's scopes and expiry; the secret is in this response only.", opt=scope("keys:write", audit="api_key.created"))
    async def create_key(self, request: Request, data: JSONBody[KeyCreate], context: Context, services: AppServices, principal: Caller,
                         idempotency_key: IdempotencyKey = None) -> CreatedApiKey:
        async def create() -> CreatedApiKey:
            return await TenancyService(services.pool).create_key(
                principal.tenant_id, name=data.name, scopes=data.scopes, mode=data.mode, expires_at=data.expires_at,
                authority=principal.authority)

        return await once(context, services, request.headers.get("authorization"), owner=principal.key_id, key=idempotency_key,
                          body=data, action=create, result_type=CreatedApiKey)

    @delete("/{key_id:str}", operation_id="revokeKey", status_code=200, responses=error_responses(400, 404, *API_KEY),
            summary="Revoke a key (one with scopes this key lacks: 403), effective within a second everywhere.", opt=scope("keys:write", audit="api_key.deleted"))
    async def revoke_key(self, key_id: FromPath[str], services: AppServices, principal: Caller) -> ApiKeyView:
        revoked = await TenancyService(services.pool).revoke_key(key_id, tenant_id=principal.tenant_id,
                                                                         authority=principal.authority)
        services.auth.forget_key(key_id)
        return revoked
