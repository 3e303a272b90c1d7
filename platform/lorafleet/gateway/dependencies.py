"""Request-scoped dependencies shared by the controllers."""

from __future__ import annotations

from litestar import Request
from litestar.datastructures import State

from lorafleet.gateway.auth import Principal
from lorafleet.gateway.request_context import request_log
from lorafleet.gateway.services import Services


def client_address(request: Request) -> str:
    """The caller's address (uvicorn resolves X-Forwarded-For from trusted proxies only)."""
    return request.client.host if request.client else "unknown"


async def provide_services(state: State) -> Services:
    return state.services


async def provide_principal(request: Request, state: State) -> Principal:
    services: Services = state.services
    principal = await services.auth.authenticate(request.headers.get("authorization"), client_address(request))
    request_log(request.scope).update(tenant_id=principal.tenant_id, key_id=principal.key_id)
    return principal
