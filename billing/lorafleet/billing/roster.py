"""Every tenant as an operator lists them: who, since when, on what terms, and what they spent this month.

Built from the tenancy and account services (``lorafleet tenants list``), read in one snapshot so
a tenant created meanwhile cannot appear without its account.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec
from lorafleet.billing.accounts import AccountService, Balance
from lorafleet.billing.pricing import micro_usd_ceil
from lorafleet.tenancy import TenancyService


class TenantSummary(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    created_at: dt.datetime
    status: str                      # see account_status
    billing_mode: str
    currency: str
    period_start: dt.date            # this calendar month (UTC)
    period_spent_micro_usd: int      # settled spend this period
    reserved_micro_usd: int          # held by requests in flight
    in_flight: int
    monthly_spend_limit_micro_usd: int | None
    max_concurrent_requests: int | None
    credit_granted_micro_usd: int
    credit_remaining_micro_usd: int
    object: str = "tenant"


def account_status(balance: Balance) -> str:
    """``spend_limit_reached``: this month's spend is at its limit; ``out_of_credit``: prepaid with no
    credit left. Either way priced requests are refused (402) until the month turns, the limit is
    raised or credits are granted. Otherwise ``active``."""
    # As admission compares: the exact spend rounded up, so "active" means a request can still be admitted.
    limit = balance.monthly_spend_limit_micro_usd
    if limit is not None and micro_usd_ceil(balance.period_spent_pico_usd) >= limit:
        return "spend_limit_reached"
    if balance.billing_mode == "prepaid" and balance.credit_remaining_pico_usd <= 0:
        return "out_of_credit"
    return "active"


async def tenant_roster(connection: asyncpg.Connection, currency: str = "usd") -> list[TenantSummary]:
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        tenants = await TenancyService(connection).all_tenants()
        balances = {b.tenant_id: b for b in await AccountService(connection, currency).balances()}
    return [
        TenantSummary(
            id=tenant.id, name=tenant.name, created_at=tenant.created_at, status=account_status(balance),
            billing_mode=balance.billing_mode, currency=balance.currency, period_start=balance.period_start,
            period_spent_micro_usd=balance.period_spent_micro_usd, reserved_micro_usd=balance.reserved_micro_usd,
            in_flight=balance.in_flight, monthly_spend_limit_micro_usd=balance.monthly_spend_limit_micro_usd,
            max_concurrent_requests=balance.max_concurrent_requests,
            credit_granted_micro_usd=balance.credit_granted_micro_usd,
            credit_remaining_micro_usd=balance.credit_remaining_micro_usd,
        )
        for tenant in tenants
        for balance in (balances[tenant.id],)  # every tenant has its account (created in one statement)
    ]
