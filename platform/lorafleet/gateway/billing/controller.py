"""The tenant's money: ``/v1/usage`` (JSON or CSV), ``/v1/balance``, ``/v1/invoices``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import Provide

from lorafleet.billing.accounts import AccountService, Balance
from lorafleet.billing.invoices import Invoice, get_invoice, list_invoices
from lorafleet.billing.usage import parse_query, usage_csv, usage_report
from lorafleet.core.errors import InvalidRequest
from lorafleet.gateway.auth import Principal
from lorafleet.gateway.dependencies import provide_principal, provide_services
from lorafleet.gateway.services import Services


class BillingController(Controller):
    path = "/v1"
    tags = ["Billing"]
    dependencies = {"principal": Provide(provide_principal), "services": Provide(provide_services)}

    @get("/usage", operation_id="getUsage",
         summary="Tokens, requests and cost by hour or day, grouped by key, model or adapter; format=csv for CSV.")
    async def usage(self, request: Request, principal: Principal, services: Services) -> Response[Any]:
        principal.require("usage:read")
        params = dict(request.query_params)
        output = params.pop("format", "json")
        if output not in ("json", "csv"):
            raise InvalidRequest("format must be 'json' or 'csv'", param="format")
        report = await usage_report(services.pool, principal.tenant_id, parse_query(params, dt.datetime.now(dt.UTC)),
                                    services.settings.currency)
        if output == "csv":
            filename = f"usage-{report.start:%Y%m%d}-{report.end:%Y%m%d}-{report.bucket}.csv"
            return Response(usage_csv(report), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        return Response(report)

    @get("/balance", operation_id="getBalance", summary="Credits left, spend this period, limits.")
    async def balance(self, principal: Principal, services: Services) -> Balance:
        principal.require("billing:read")
        return await AccountService(services.pool, services.settings.currency).balance(principal.tenant_id)

    @get("/invoices", operation_id="listInvoices", summary="The tenant's invoices, newest first.")
    async def invoices(self, principal: Principal, services: Services) -> dict[str, Any]:
        principal.require("billing:read")
        invoices = await list_invoices(services.pool, principal.tenant_id, limit=120)
        return {"object": "list", "data": invoices, "has_more": False}

    @get("/invoices/{invoice_id:str}", operation_id="getInvoice", summary="One invoice with its lines.")
    async def invoice(self, invoice_id: str, principal: Principal, services: Services) -> Invoice:
        principal.require("billing:read")
        return await get_invoice(services.pool, invoice_id, principal.tenant_id)
