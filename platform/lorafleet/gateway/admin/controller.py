"""The operator's admin API (``Authorization: Bearer <LORAFLEET_ADMIN_TOKEN>``): prices, credits, limits."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, patch, post
from litestar.datastructures import State
from litestar.di import Provide

from lorafleet.billing.accounts import AccountService, Balance, CreditGrant, KeyLimits, PriceView
from lorafleet.billing.invoices import Invoice, get_invoice
from lorafleet.gateway.admin.schemas import AccountUpdate, CreditCreate, KeyLimitsUpdate, PriceCreate
from lorafleet.gateway.auth import verify_admin_token
from lorafleet.gateway.body import decode
from lorafleet.gateway.dependencies import client_address, provide_services
from lorafleet.gateway.services import Services


async def require_admin(request: Request, state: State) -> None:
    services: Services = state.services
    verify_admin_token(services.settings.admin_token, services.auth.throttle, request.headers.get("authorization"),
                       client_address(request))




class AdminController(Controller):
    path = "/admin"
    tags = ["Admin"]
    dependencies = {"admin": Provide(require_admin), "services": Provide(provide_services)}

    @get("/prices", operation_id="adminListPrices", summary="Every price version.")
    async def list_prices(self, admin: None, services: Services) -> dict[str, Any]:
        return {"object": "list", "data": await _accounts(services).list_prices(), "has_more": False}

    @post("/prices", operation_id="adminSetPrice", status_code=201,
          summary="Add a price version for a base model (effective now, or at effective_at).")
    async def set_price(self, request: Request, admin: None, services: Services) -> PriceView:
        body = decode(await request.body(), PriceCreate)
        return await _accounts(services).set_price(
            body.base_model, prompt=body.prompt_micro_usd_per_mtok, completion=body.completion_micro_usd_per_mtok,
            adapter_surcharge=body.adapter_surcharge_micro_usd_per_mtok, effective_at=body.effective_at)

    @get("/tenants", operation_id="adminListTenants", summary="Every tenant's spend, credits and limits.")
    async def list_tenants(self, admin: None, services: Services) -> dict[str, Any]:
        return {"object": "list", "data": await _accounts(services).balances(), "has_more": False}

    @get("/tenants/{tenant_id:str}", operation_id="adminGetTenant", summary="One tenant's balance and limits.")
    async def get_tenant(self, tenant_id: str, admin: None, services: Services) -> Balance:
        return await _accounts(services).balance(tenant_id)

    @patch("/tenants/{tenant_id:str}", operation_id="adminUpdateTenant",
           summary="Billing mode, monthly spend limit, concurrency cap (null clears a limit).")
    async def update_tenant(self, tenant_id: str, request: Request, admin: None, services: Services) -> Balance:
        body = decode(await request.body(), AccountUpdate)
        return await _accounts(services).set_limits(
            tenant_id, billing_mode=body.billing_mode, monthly_spend_limit_micro_usd=body.monthly_spend_limit_micro_usd,
            max_concurrent_requests=body.max_concurrent_requests)

    @post("/tenants/{tenant_id:str}/credits", operation_id="adminGrantCredit", status_code=201,
          summary="Grant credits (a negative amount takes them back).")
    async def grant_credit(self, tenant_id: str, request: Request, admin: None, services: Services) -> CreditGrant:
        body = decode(await request.body(), CreditCreate)
        return await _accounts(services).grant_credit(tenant_id, body.amount_micro_usd, body.reason)

    @patch("/keys/{key_id:str}", operation_id="adminUpdateKeyLimits",
           summary="A key's requests/min and tokens/min limits (null: unlimited).")
    async def update_key(self, key_id: str, request: Request, admin: None, services: Services) -> KeyLimits:
        body = decode(await request.body(), KeyLimitsUpdate)
        return await _accounts(services).set_key_limits(
            key_id, requests_per_minute=body.requests_per_minute, tokens_per_minute=body.tokens_per_minute)

    @get("/invoices/{invoice_id:str}", operation_id="adminGetInvoice", summary="Any tenant's invoice.")
    async def invoice(self, invoice_id: str, admin: None, services: Services) -> Invoice:
        return await get_invoice(services.pool, invoice_id, None)


def _accounts(services: Services) -> AccountService:
    return AccountService(services.pool, services.settings.currency)
