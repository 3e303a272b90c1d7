"""The tenant's money: ``/v1/usage`` (JSON or CSV), ``/v1/balance``, ``/v1/invoices``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from litestar import Controller, Response, get
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, Schema
from litestar.params import FromPath, FromQuery, Parameter
from lorafleet.billing.accounts import AccountService, Balance
from lorafleet.billing.invoices import Invoice, get_invoice, list_invoices
from lorafleet.billing.usage import UsageReport, parse_query, usage_csv, usage_report
from lorafleet.core.types import Page
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, TENANT_GUARDS, AppServices, Caller, scope
from lorafleet.gateway.error_specs import API_KEY, error_responses
from lorafleet.gateway.openapi import TENANT_SECURITY
from lorafleet.gateway.params import Limit, StartingAfter

Time = Annotated[str | None, Parameter(description="RFC 3339 with a timezone (2026-11-01T00:00:00Z) or Unix seconds.")]
Filter = Annotated[str | None, Parameter(max_length=256)]
CSV = "text/csv"  # Litestar adds "; charset=utf-8" to every text/* type


@dataclass
class UsageOperation(Operation):
    """/v1/usage answers JSON or, with format=csv, the same rows as CSV: both are documented."""

    def __post_init__(self) -> None:
        if self.responses and "200" in self.responses:
            self.responses["200"].content = {**(self.responses["200"].content or {}),  # type: ignore[union-attr]
                                             CSV: OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))}


class AccountController(Controller):
    path = "/v1"
    tags = ["Billing"]
    security = TENANT_SECURITY
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES

    @get("/usage", operation_id="getUsage", media_type="application/json", operation_class=UsageOperation,
         responses={200: ResponseSpec(UsageReport, description="The report (JSON), or the same rows as CSV."),
                    **error_responses(400, *API_KEY)},
         summary="Tokens, requests and cost by hour or day, grouped by key, model or adapter; format=csv for CSV.", opt=scope("usage:read"))
    async def usage(self, services: AppServices, principal: Caller,
                    bucket: FromQuery[Literal["hour", "day"]] = "day", start: Time = None, end: Time = None,
                    group_by: Annotated[str | None, Parameter(description="Comma-separated: key, model, adapter.",
                                                              max_length=64)] = None,
                    api_key_id: Filter = None, model: Filter = None, adapter: Filter = None,
                    format: FromQuery[Literal["json", "csv"]] = "json") -> Response[Any]:  # noqa: A002 - the API's name
        params = {name: value for name, value in (("bucket", bucket), ("start", start), ("end", end),
                                                   ("group_by", group_by), ("api_key_id", api_key_id),
                                                   ("model", model), ("adapter", adapter)) if value}
        report = await usage_report(services.pool, principal.tenant_id, parse_query(params, dt.datetime.now(dt.UTC)),
                                    services.settings.currency)
        if format == "csv":
            filename = f"usage-{report.start:%Y%m%d}-{report.end:%Y%m%d}-{report.bucket}.csv"
            return Response(usage_csv(report), media_type=CSV,
                            headers={"Content-Disposition": f'attachment; filename="{filename}"'})
        return Response(report)

    @get("/balance", operation_id="getBalance", responses=error_responses(*API_KEY),
         summary="Credits left, spend this period, limits.", opt=scope("billing:read"))
    async def balance(self, services: AppServices, principal: Caller) -> Balance:
        return await AccountService(services.pool, services.settings.currency).balance(principal.tenant_id)

    @get("/invoices", operation_id="listInvoices", responses=error_responses(400, *API_KEY),
         summary="The tenant's invoices, newest first.", opt=scope("billing:read"))
    async def invoices(self, services: AppServices, principal: Caller, limit: Limit = 24,
                       starting_after: StartingAfter = None) -> Page[Invoice]:
        return await list_invoices(services.pool, principal.tenant_id, after=starting_after, limit=limit)

    @get("/invoices/{invoice_id:str}", operation_id="getInvoice", responses=error_responses(400, 404, *API_KEY),
         summary="One invoice with its lines.", opt=scope("billing:read"))
    async def invoice(self, invoice_id: FromPath[str], services: AppServices, principal: Caller) -> Invoice:
        return await get_invoice(services.pool, invoice_id, principal.tenant_id)

