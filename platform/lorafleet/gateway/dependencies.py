"""Request-scoped dependencies shared by the controllers: the request's context, then its principal."""

from __future__ import annotations

from typing import Annotated

from litestar import Request
from litestar.datastructures import State
from litestar.di import Dependency, Provide
from litestar.params import SkipValidationMarker
from lorafleet.gateway.auth import Principal
from lorafleet.gateway.context import RequestContext, provide_context
from lorafleet.gateway.services import Services

# Handler parameters: injected by name, and not re-validated (they are ours; Litestar would otherwise
# check each value against its annotation on every request).
Context = Annotated[RequestContext, Dependency(kind="named"), SkipValidationMarker()]
Caller = Annotated[Principal, Dependency(kind="named"), SkipValidationMarker()]
Operator = Annotated[None, Dependency(kind="named"), SkipValidationMarker()]  # the admin token was checked


def client_address(request: Request) -> str:
    """The caller's address (uvicorn resolves X-Forwarded-For from trusted proxies only)."""
    return request.client.host if request.client else "unknown"


async def provide_principal(request: Request, context: Context) -> Principal:
    """The API key's principal (401 otherwise); its tenant and key go into the request's context."""
    principal = await context.services.auth.authenticate(request.headers.get("authorization"), context.client)
    context.tenant_id = principal.tenant_id
    context.key_id = principal.key_id
    return principal


async def provide_services(state: State) -> Services:
    return state.services


# What a tenant-API controller declares: one chain (context → principal), never a task group.
TENANT_DEPENDENCIES = {"context": Provide(provide_context), "principal": Provide(provide_principal)}
