"""The dependencies every route can declare, provided once on the app: the app's services, the
request's context, and (tenant routes) its principal.

They form one chain — services → context → principal — because Litestar resolves dependencies that
do not depend on each other concurrently, in a task group of their own: a measurable cost on every
request. So the context's provider takes the services (and only passes them over).
"""

from __future__ import annotations

from typing import Annotated

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Dependency, Provide
from litestar.handlers import BaseRouteHandler
from litestar.params import SkipValidationMarker
from lorafleet.gateway.auth import Principal
from lorafleet.gateway.context import RequestContext, context_of
from lorafleet.gateway.services import Services

# Handler parameters: injected by name, and not re-validated (they are ours; Litestar would otherwise
# check each value against its annotation on every request).
AppServices = Annotated[Services, Dependency(kind="named"), SkipValidationMarker()]
Context = Annotated[RequestContext, Dependency(kind="named"), SkipValidationMarker()]
Caller = Annotated[Principal, Dependency(kind="named"), SkipValidationMarker()]
Operator = Annotated[None, Dependency(kind="named"), SkipValidationMarker()]  # the admin token was checked


def client_address(request: Request) -> str:
    """The caller's address (uvicorn resolves X-Forwarded-For from trusted proxies only)."""
    return request.client.host if request.client else "unknown"


async def require_api_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard of every tenant route: the API key's principal (401 otherwise) into the request's context.
    A guard, so an unauthenticated caller gets 401 before any of its body is read or decoded."""
    context = context_of(connection.scope)
    services: Services = connection.app.state.services
    if context.batch is not None:  # a batch line: it runs as the key that created its batch, if still active
        principal = await services.auth.principal_of_key(context.batch.api_key_id, context.batch.tenant_id)
    else:
        principal = await services.auth.authenticate(connection.headers.get("authorization"), context.client)
    context.principal = principal
    context.tenant_id = principal.tenant_id
    context.key_id = principal.key_id


def scope(name: str, audit: str | bool | None = None) -> dict[str, str | bool]:
    """A tenant route's ``opt``: the scope its key must carry (``@get(..., opt=scope("keys:read"))``) and, for
    a route that changes something, the audit event it records (``False``: none, the route changes nothing
    administered; see gateway/audit/recorder.py)."""
    return {"scope": name} if audit is None else {"scope": name, "audit": audit}


async def require_scope(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Guard after :func:`require_api_key`: the route's scope (its ``opt``), else 403 before any of the
    request's body is read. A tenant route that declares none is refused: a scope is never implied."""
    principal = context_of(connection.scope).principal
    assert principal is not None  # require_api_key ran first
    principal.require(handler.opt.get("scope", "(a scope the route does not declare)"))


async def provide_principal(context: Context) -> Principal:
    """The principal :func:`require_api_key` authenticated."""
    return context.principal  # type: ignore[return-value]


async def provide_services(state: State) -> Services:
    return state.services


async def provide_context(request: Request, services: AppServices) -> RequestContext:
    """This request's context, created by the context middleware (after the services: one chain)."""
    return context_of(request.scope)


# What a tenant-API controller declares: the guard, then one chain (context → principal), never a task group.
TENANT_GUARDS = [require_api_key, require_scope]
APP_DEPENDENCIES = {"services": Provide(provide_services), "context": Provide(provide_context)}
TENANT_DEPENDENCIES = {"principal": Provide(provide_principal)}
