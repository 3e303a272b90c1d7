"""The operator's admin API (``Authorization: Bearer <LORAFLEET_ADMIN_TOKEN>``): tenants, keys, prices, credits, limits.

Every POST honours ``Idempotency-Key`` (the operator's own keyspace): a retried credit grant
grants once.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath, JSONBody, Parameter, QueryParameter
from lorafleet.adapters.service import AdapterPin, AdapterVersionStats
from lorafleet.billing.accounts import (
    AccountService,
    Balance,
    CreditGrant,
    KeyLimits,
    PriceView,
)
from lorafleet.billing.invoices import Invoice, get_invoice
from lorafleet.core.types import Page
from lorafleet.gateway.admin.schemas import (
    AccountUpdate,
    CreditCreate,
    KeyLimitsUpdate,
    PriceCreate,
    TenantCreate,
    TenantKeyCreate,
)
from lorafleet.gateway.audit.recorder import AUDIT_REFUSALS, audited
from lorafleet.gateway.auth import verify_admin_token
from lorafleet.gateway.body import StrictBody
from lorafleet.gateway.context import context_of
from lorafleet.gateway.dependencies import AppServices, Context, Operator
from lorafleet.gateway.error_specs import ADMIN_TOKEN, error_responses
from lorafleet.gateway.fleet.views import WorkerList, worker_views
from lorafleet.gateway.idempotency import IdempotencyKey, once
from lorafleet.gateway.openapi import ADMIN_SECURITY
from lorafleet.gateway.params import Limit, StartingAfter, refuse_unknown_query
from lorafleet.gateway.services import Services
from lorafleet.tenancy.service import CreatedApiKey, TenancyService, Tenant

OPERATOR = "operator"  # the owner of the operator's idempotency keys


async def require_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """A guard, so the token is checked before anything of the request is read: an unauthenticated
    caller gets 401 whatever its body or parameters (a dependency would run after they were decoded)."""
    context = context_of(connection.scope)
    services: Services = connection.app.state.services
    verify_admin_token(services.settings.admin_token, services.auth.throttle, connection.headers.get("authorization"),
                       context.client)
    context.operator = True


async def _admin_checked(context: Context) -> None:
    """The ``admin`` a handler declares: the guard has checked the token by the time it runs. (It takes
    the context only to keep the dependencies one chain: see gateway/dependencies.py.)"""


class AdminController(Controller):
    path = "/admin"
    tags = ["Admin"]
    security = ADMIN_SECURITY
    guards = [require_admin]
    opt = {AUDIT_REFUSALS: True}  # a refused token is recorded (gateway/audit)
    dependencies = {"admin": Provide(_admin_checked)}

    # ---- tenants and keys ----------------------------------------------------------------------

    @post("/tenants", operation_id="adminCreateTenant", opt=audited("organization.created"), status_code=201, dto=StrictBody[TenantCreate], return_dto=None,
          responses=error_responses(400, 409, 413, *ADMIN_TOKEN),
          summary="Create a tenant (postpaid, no limits until set).")
    async def create_tenant(self, request: Request, data: JSONBody[TenantCreate], context: Context, services: AppServices, admin: Operator,
                            idempotency_key: IdempotencyKey = None) -> Tenant:
        return await once(context, services, request.headers.get("authorization"), owner=OPERATOR, key=idempotency_key,
                          body=data, action=lambda: TenancyService(services.pool).create_tenant(data.name),
                          result_type=Tenant)

    @post("/tenants/{tenant_id:str}/keys", operation_id="adminCreateKey", opt=audited("api_key.created"), status_code=201,
          dto=StrictBody[TenantKeyCreate], return_dto=None, responses=error_responses(400, 404, 409, 413, *ADMIN_TOKEN),
          summary="Create an API key for a tenant; the secret is in this response only.")
    async def create_key(self, tenant_id: FromPath[str], request: Request, data: JSONBody[TenantKeyCreate], context: Context, services: AppServices,
                         admin: Operator, idempotency_key: IdempotencyKey = None) -> CreatedApiKey:
        async def create() -> CreatedApiKey:
            return await TenancyService(services.pool).create_key(
                tenant_id, name=data.name, scopes=data.scopes, mode=data.mode, expires_at=data.expires_at)

        return await once(context, services, request.headers.get("authorization"), owner=OPERATOR, key=idempotency_key,
                          body=[tenant_id, data], action=create, result_type=CreatedApiKey)

    @get("/tenants", operation_id="adminListTenants", responses=error_responses(400, *ADMIN_TOKEN),
         summary="Every tenant's spend, credits and limits, oldest first.")
    async def list_tenants(self, services: AppServices, admin: Operator, limit: Limit = 100,
                           starting_after: StartingAfter = None) -> Page[Balance]:
        return await _accounts(services).page_balances(after=starting_after, limit=limit)

    @get("/tenants/{tenant_id:str}", operation_id="adminGetTenant", responses=error_responses(400, 404, *ADMIN_TOKEN),
         summary="One tenant's balance and limits.")
    async def get_tenant(self, tenant_id: FromPath[str], services: AppServices, admin: Operator) -> Balance:
        return await _accounts(services).balance(tenant_id)

    @patch("/tenants/{tenant_id:str}", operation_id="adminUpdateTenant", opt=audited("organization.updated"), dto=StrictBody[AccountUpdate], return_dto=None,
           responses=error_responses(400, 404, 413, *ADMIN_TOKEN),
           summary="Billing mode, monthly spend limit, concurrency cap (null clears a limit).")
    async def update_tenant(self, tenant_id: FromPath[str], data: JSONBody[AccountUpdate], services: AppServices, admin: Operator) -> Balance:
        return await _accounts(services).set_limits(
            tenant_id, billing_mode=data.billing_mode, monthly_spend_limit_micro_usd=data.monthly_spend_limit_micro_usd,
            max_concurrent_requests=data.max_concurrent_requests)

    @patch("/keys/{key_id:str}", operation_id="adminUpdateKeyLimits", opt=audited("rate_limit.updated"), dto=StrictBody[KeyLimitsUpdate], return_dto=None,
           responses=error_responses(400, 404, 413, *ADMIN_TOKEN),
           summary="A key's requests/min and tokens/min limits (null: unlimited).")
    async def update_key(self, key_id: FromPath[str], data: JSONBody[KeyLimitsUpdate], services: AppServices, admin: Operator) -> KeyLimits:
        return await _accounts(services).set_key_limits(
            key_id, requests_per_minute=data.requests_per_minute, tokens_per_minute=data.tokens_per_minute)

    # ---- money ---------------------------------------------------------------------------------

    @get("/prices", operation_id="adminListPrices", responses=error_responses(400, *ADMIN_TOKEN),
         summary="Every price version, in the order they were set.")
    async def list_prices(self, services: AppServices, admin: Operator, limit: Limit = 100,
                          starting_after: Annotated[int | None, Parameter(ge=1, le=2**63 - 1, description="The last "
                                                                                 "id of the previous page.")] = None,
                          ) -> Page[PriceView]:
        return await _accounts(services).page_prices(after=starting_after, limit=limit)

    @post("/prices", operation_id="adminSetPrice", opt=audited("price.created"), status_code=201, dto=StrictBody[PriceCreate], return_dto=None,
          responses=error_responses(400, 404, 409, 413, *ADMIN_TOKEN),
          summary="Add a price version for a base model (effective now, or at effective_at).")
    async def set_price(self, request: Request, data: JSONBody[PriceCreate], context: Context, services: AppServices, admin: Operator,
                        idempotency_key: IdempotencyKey = None) -> PriceView:
        async def set_price() -> PriceView:
            price = await _accounts(services).set_price(
                data.base_model, prompt=data.prompt_micro_usd_per_mtok, completion=data.completion_micro_usd_per_mtok,
                adapter_surcharge=data.adapter_surcharge_micro_usd_per_mtok,
                training=data.training_micro_usd_per_mtok, cached_prompt=data.cached_prompt_micro_usd_per_mtok,
                batch_discount_bps=data.batch_discount_bps,
                effective_at=data.effective_at)
            await services.catalog.refresh()  # this gateway applies it at once; others within a refresh
            return price

        return await once(context, services, request.headers.get("authorization"), owner=OPERATOR, key=idempotency_key,
                          body=data, action=set_price, result_type=PriceView)

    @post("/tenants/{tenant_id:str}/credits", operation_id="adminGrantCredit", opt=audited("credit.granted"), status_code=201,
          dto=StrictBody[CreditCreate], return_dto=None, responses=error_responses(400, 404, 409, 413, *ADMIN_TOKEN),
          summary="Grant credits (a negative amount takes them back).")
    async def grant_credit(self, tenant_id: FromPath[str], request: Request, data: JSONBody[CreditCreate], context: Context, services: AppServices,
                           admin: Operator, idempotency_key: IdempotencyKey = None) -> CreditGrant:
        return await once(context, services, request.headers.get("authorization"), owner=OPERATOR, key=idempotency_key,
                          body=[tenant_id, data],
                          action=lambda: _accounts(services).grant_credit(tenant_id, data.amount_micro_usd, data.reason),
                          result_type=CreditGrant)

    # ---- the fleet -----------------------------------------------------------------------------

    @get("/workers", operation_id="adminListWorkers", responses=error_responses(*ADMIN_TOKEN),
         summary="Each worker's state, load and resident adapters (slots / CPU / disk), as this gateway last polled.")
    async def list_workers(self, services: AppServices, admin: Operator) -> WorkerList:
        return await worker_views(services.registry.workers(), services.adapters)

    @get("/adapters/stats", operation_id="adminAdapterStats", responses=error_responses(400, *ADMIN_TOKEN),
         summary="Per adapter version: requests, failures, tokens, time to first token p50/p95, from the ledger.")
    async def adapter_stats(self, request: Request, services: AppServices, admin: Operator,
                            tenant_id: Annotated[str | None, QueryParameter(min_length=1, max_length=64)] = None,
                            name: Annotated[str | None, QueryParameter(min_length=1, max_length=64)] = None,
                            hours: Annotated[int, QueryParameter(ge=1, le=24 * 90, description="The window.")] = 24,
                            limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100
                            ) -> AdapterStatsList:
        refuse_unknown_query(request.query_params, ("tenant_id", "name", "hours", "limit"))
        since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
        stats = await services.adapters.version_stats(since, tenant_id=tenant_id, name=name, limit=limit)
        return AdapterStatsList(data=stats, since=since)

    @post("/adapters/{adapter_id:str}/pin", operation_id="adminPinAdapter", opt=audited("adapter.pinned"), status_code=200,
          responses=error_responses(400, 404, *ADMIN_TOKEN),
          summary="Keep an adapter in CPU memory and on disk on every worker of its base model (never evicted).")
    async def pin_adapter(self, adapter_id: FromPath[str], services: AppServices, admin: Operator) -> AdapterPin:
        return await _pin(services, adapter_id, True)

    @delete("/adapters/{adapter_id:str}/pin", operation_id="adminUnpinAdapter", opt=audited("adapter.unpinned"), status_code=200,
            responses=error_responses(400, 404, *ADMIN_TOKEN),
            summary="Let a pinned adapter be evicted again when it goes cold.")
    async def unpin_adapter(self, adapter_id: FromPath[str], services: AppServices, admin: Operator) -> AdapterPin:
        return await _pin(services, adapter_id, False)

    @get("/invoices/{invoice_id:str}", operation_id="adminGetInvoice", responses=error_responses(400, 404, *ADMIN_TOKEN),
         summary="Any tenant's invoice.")
    async def invoice(self, invoice_id: FromPath[str], services: AppServices, admin: Operator) -> Invoice:
        return await get_invoice(services.pool, invoice_id, None)


class AdapterStatsList(msgspec.Struct, kw_only=True):
    data: list[AdapterVersionStats]
    since: dt.datetime
    object: str = "list"


def _accounts(services: Services) -> AccountService:
    return AccountService(services.pool, services.settings.currency)


async def _pin(services: Services, adapter_id: str, pinned: bool) -> AdapterPin:
    pin = await services.adapters.set_pinned(adapter_id, pinned)
    await services.adapter_calls.pin_everywhere(pin.id, pin.base_model, pinned)
    return pin
