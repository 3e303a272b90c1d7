"""What a tenant's dashboard shows at a glance, from the daily rollups (never the ledger itself).

Kept here, beside ``usage_report``, so the dashboard calls a service instead of running SQL, and
its figures come from the same rollups ``/v1/usage`` reads.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec
from lorafleet.db import queries


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    requests: int
    errors: int
    tokens: int
    cost_micro_usd: int


class Refusals(msgspec.Struct, frozen=True, kw_only=True):
    quota: int  # 402 over budget
    rate: int   # 429 rate or concurrency limit


class AdapterSpend(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    requests: int
    cost_micro_usd: int


class AdapterActivity(msgspec.Struct, frozen=True, kw_only=True):
    requests: int
    last_used: dt.datetime | None


class TenantOverview(msgspec.Struct, frozen=True, kw_only=True):
    today: Totals
    month: Totals
    refusals: Refusals
    days: list[dt.date]                              # the chart's 30 days, oldest first
    daily_cost: dict[str, dict[dt.date, int]]        # series (model or adapter name) → day → µUSD
    top_adapters: list[AdapterSpend]


def _day_start(now: dt.datetime) -> dt.datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: dt.datetime) -> dt.datetime:
    return _day_start(now).replace(day=1)


async def tenant_overview(pool: asyncpg.Pool, tenant_id: str, now: dt.datetime, *, days: int = 30,
                          top: int = 5) -> TenantOverview:
    today, month = _day_start(now), month_start(now)
    first = today - dt.timedelta(days=days - 1)
    series: dict[str, dict[dt.date, int]] = {}
    for row in await pool.fetch(queries.dashboard_daily_cost, tenant_id, first):
        series.setdefault(row["series"], {})[row["bucket"].date()] = row["cost_micro_usd"]
    refusals = await pool.fetchrow(queries.dashboard_refusals, tenant_id, month)
    return TenantOverview(
        today=Totals(**dict(await pool.fetchrow(queries.dashboard_totals, tenant_id, today))),
        month=Totals(**dict(await pool.fetchrow(queries.dashboard_totals, tenant_id, month))),
        refusals=Refusals(quota=refusals["quota"], rate=refusals["rate"]),
        days=[(first + dt.timedelta(days=i)).date() for i in range(days)],
        daily_cost=series,
        top_adapters=[AdapterSpend(**dict(row)) for row in await pool.fetch(queries.dashboard_top_adapters, tenant_id,
                                                                            month, top)],
    )


async def adapter_activity(pool: asyncpg.Pool, tenant_id: str, since: dt.datetime) -> dict[str, AdapterActivity]:
    """Requests since ``since`` and the last day used, per adapter id."""
    return {row["adapter_id"]: AdapterActivity(requests=row["requests"], last_used=row["last_used"])
            for row in await pool.fetch(queries.dashboard_adapter_activity, tenant_id, since)}


async def key_last_used(pool: asyncpg.Pool, tenant_id: str) -> dict[str, dt.datetime]:
    """The day each of the tenant's keys was last used."""
    return {row["api_key_id"]: row["last_used"] for row in await pool.fetch(queries.dashboard_key_last_used, tenant_id)}
