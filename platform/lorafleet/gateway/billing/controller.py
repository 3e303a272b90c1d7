"""The tenant's money: ``/v1/usage`` (JSON or CSV), ``/v1/balance``, ``/v1/invoices``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from litestar import Controller, Response, get
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, Parameter
from lorafleet.billing.accounts import AccountService, Balance
from lorafleet.billing.invoices import Invoice, get_invoice, list_invoices
from lorafleet.billing.usage import UsageReport, parse_query, usage_csv, usage_report
from lorafleet.core.types import Page
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, Caller, Context
from lorafleet.gateway.params import Limit, StartingAfter

Time = Annotated[str | None, Parameter(description="RFC 3339 with a timezone (2026-11-01T00:00:00Z) or Unix seconds.")]
Filter = Annotated[str | None, Parameter(max_length=256)]


class BillingController(Controller):
    path = "/v1"
    tags = ["Billing"]
    dependencies = TENANT_DEPENDENCIES

    @get("/usage", operation_id="getUsage", media_type="application/json",
         responses={200: ResponseSpec(UsageReport, description="The report (JSON), or the same rows as CSV.")},
         summary="Tokens, requests and cost by hour or day, grouped by key, model or adapter; format=csv for CSV.")
    async def usage(self, context: Context, principal: Caller,
                    bucket: FromQuery[Literal["hour", "day"]] = "day", start: Time = None, end: Time = None,
                    group_by: Annotated[str | None, Parameter(description="Comma-separated: key, model, adapter.",
                                                              max_length=64)] = None,
                    api_key_id: Filter = None, model: Filter = None, adapter: Filter = None,
                    format: FromQuery[Literal["json", "csv"]] = "json") -> Response[Any]:  # noqa: A002 - the API's name
        principal.require("usage:read")
        params = {name: value for name, value in (("bucket", bucket), ("start", start), ("end", end),
                                                   ("group_by", group_by), ("api_key_id", api_key_id),
                                                   ("model", model), ("adapter", adapter)) if value}
        services = context.services
        report = await usage_report(services.pool, principal.tenant_id, parse_query(params, dt.datetime.now(dt.UTC)),
                                    services.settings.currency)
        if format == "csv":
            filename = f"usage-{report.start:%Y%m%d}-{report.end:%Y%m%d}-{report.bucket}.csv"
            return Response(usage_csv(report), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        return Response(report)

    @get("/balance", operation_id="getBalance", summary="Credits left, spend this period, limits.")
    async def balance(self, context: Context, principal: Caller) -> Balance:
        principal.require("billing:read")
        services = context.services
        return await AccountService(services.pool, services.settings.currency).balance(principal.tenant_id)

    @get("/invoices", operation_id="listInvoices", summary="The tenant's invoices, newest first.")
    async def invoices(self, context: Context, principal: Caller, limit: Limit = 24,
                       starting_after: StartingAfter = None) -> Page[Invoice]:
        principal.require("billing:read")
        return await list_invoices(context.services.pool, principal.tenant_id, after=starting_after, limit=limit)

    @get("/invoices/{invoice_id:str}", operation_id="getInvoice", summary="One invoice with its lines.")
    async def invoice(self, invoice_id: FromPath[str], context: Context, principal: Caller) -> Invoice:
        principal.require("billing:read")
        return await get_invoice(context.services.pool, invoice_id, principal.tenant_id)

