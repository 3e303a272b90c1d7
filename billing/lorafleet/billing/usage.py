"""``/v1/usage``: tokens, requests and cost over a time range, from the rollups.

Buckets are UTC hours or days; a range is widened to whole buckets. Rows exist only for buckets
with traffic. The same rows serve JSON and CSV, so both always carry identical numbers.

Each row and the totals carry their exact cost (``cost_pico_usd``) and that amount rounded once,
half up, to whole micro-USD (``cost_micro_usd``, billing/pricing.py): the totals round the exact
sum, not the rounded rows, so a million tiny requests add up to what they cost.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import msgspec
from lorafleet.billing.pricing import micro_usd
from lorafleet.core.errors import InvalidRequest
from lorafleet.db import queries

GROUPS = ("key", "model", "adapter")
MAX_RANGE = {"hour": dt.timedelta(days=93), "day": dt.timedelta(days=3 * 366)}
DEFAULT_RANGE = {"hour": dt.timedelta(days=1), "day": dt.timedelta(days=30)}
CSV_COLUMNS = ("bucket_start", "kind", "api_key_id", "model", "adapter", "requests", "errors", "prompt_tokens",
               "cached_prompt_tokens", "completion_tokens", "total_tokens", "cost_micro_usd", "cost_pico_usd")


class UsageRow(msgspec.Struct, kw_only=True):
    bucket_start: dt.datetime
    api_key_id: str | None
    model: str | None
    adapter: str | None
    adapter_id: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_micro_usd: int   # the bucket's exact cost, rounded half up
    cost_pico_usd: int    # exact (10⁻¹² USD)
    cached_prompt_tokens: int = 0  # of prompt_tokens: served from the engine's prefix cache (priced apart)
    # Always its own line: synchronous requests, batch lines (discounted), fine-tuning jobs (trained
    # tokens as prompt_tokens).
    kind: Literal["requests", "batch", "fine_tuning"] = "requests"


class UsageTotals(msgspec.Struct, kw_only=True):
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_micro_usd: int = 0   # the exact total, rounded half up once
    cost_pico_usd: int = 0
    cached_prompt_tokens: int = 0


class UsageReport(msgspec.Struct, kw_only=True):
    bucket: str
    start: dt.datetime
    end: dt.datetime
    group_by: list[str]
    data: list[UsageRow]
    totals: UsageTotals
    currency: str = "usd"
    object: str = "usage"


@dataclass(frozen=True, slots=True)
class UsageQuery:
    start: dt.datetime
    end: dt.datetime
    bucket: str
    group_by: tuple[str, ...]
    api_key_id: str | None = None
    model: str | None = None      # base model name
    adapter: str | None = None    # adapter id or name


def parse_time(text: str, param: str) -> dt.datetime:
    """RFC 3339 (a timezone is required) or Unix seconds."""
    try:
        if text.lstrip("-").isdigit():
            return dt.datetime.fromtimestamp(int(text), dt.UTC)
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise InvalidRequest(f"{param} must be an RFC 3339 time (2026-11-01T00:00:00Z) or Unix seconds",
                             param=param) from None
    if value.tzinfo is None:
        raise InvalidRequest(f"{param} needs a timezone, e.g. 2026-11-01T00:00:00Z", param=param)
    return value.astimezone(dt.UTC)


def _floor(moment: dt.datetime, bucket: str) -> dt.datetime:
    moment = moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if bucket == "day" else moment


def parse_query(params: dict[str, str], now: dt.datetime) -> UsageQuery:
    bucket = params.get("bucket", "day")
    if bucket not in MAX_RANGE:
        raise InvalidRequest("bucket must be 'hour' or 'day'", param="bucket")
    end = parse_time(params["end"], "end") if params.get("end") else now
    start = parse_time(params["start"], "start") if params.get("start") else end - DEFAULT_RANGE[bucket]
    start = _floor(start, bucket)
    step = dt.timedelta(hours=1) if bucket == "hour" else dt.timedelta(days=1)
    end = _floor(end, bucket) + (step if _floor(end, bucket) != end else dt.timedelta(0))
    if end <= start:
        raise InvalidRequest("end must be after start", param="end")
    if end - start > MAX_RANGE[bucket]:
        raise InvalidRequest(f"a range of {bucket} buckets may span at most {MAX_RANGE[bucket].days} days",
                             param="start")
    group_by = tuple(g for g in (params.get("group_by") or "").split(",") if g)
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown:
        raise InvalidRequest(f"group_by may hold {', '.join(GROUPS)}; got {', '.join(unknown)}", param="group_by")
    return UsageQuery(start=start, end=end, bucket=bucket, group_by=tuple(dict.fromkeys(group_by)),
                      api_key_id=params.get("api_key_id") or None, model=params.get("model") or None,
                      adapter=params.get("adapter") or None)


async def usage_report(pool: asyncpg.Pool, tenant_id: str, query: UsageQuery, currency: str = "usd") -> UsageReport:
    base_model_id = adapter_id = None
    if query.model is not None:
        model = await pool.fetchrow(queries.get_base_model_by_name, query.model)
        if model is None:
            return _report(query, [], currency)  # an unknown model has no usage: not an error
        base_model_id = model["id"]
    if query.adapter is not None:
        adapter_id = await pool.fetchval(queries.find_tenant_adapter, tenant_id, query.adapter)
        if adapter_id is None:
            return _report(query, [], currency)
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(queries.force_custom_plans)
        rows = await connection.fetch(queries.usage_report, tenant_id, query.start, query.end, "key" in query.group_by,
                                      "model" in query.group_by, "adapter" in query.group_by, query.api_key_id,
                                      base_model_id, adapter_id, query.bucket)
    data = [
        UsageRow(bucket_start=row["bucket"], kind=row["kind"], api_key_id=row["api_key_id"], model=row["model"],
                 adapter=row["adapter"], adapter_id=row["adapter_id"], requests=row["requests"],
                 errors=row["errors"], prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
                 total_tokens=row["prompt_tokens"] + row["completion_tokens"],
                 cached_prompt_tokens=row["cached_prompt_tokens"],
                 cost_micro_usd=micro_usd(int(row["cost_pico_usd"])), cost_pico_usd=int(row["cost_pico_usd"]))
        for row in rows
    ]
    return _report(query, data, currency)


def _report(query: UsageQuery, data: list[UsageRow], currency: str) -> UsageReport:
    totals = UsageTotals()
    for row in data:
        for name in UsageTotals.__struct_fields__:  # kind is not one: totals cover every kind
            if name != "cost_micro_usd":
                setattr(totals, name, getattr(totals, name) + getattr(row, name))
    totals.cost_micro_usd = micro_usd(totals.cost_pico_usd)
    return UsageReport(bucket=query.bucket, start=query.start, end=query.end, group_by=list(query.group_by), data=data,
                       totals=totals, currency=currency)


def usage_csv(report: UsageReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in report.data:
        record: dict[str, Any] = msgspec.structs.asdict(row)
        record["bucket_start"] = row.bucket_start.isoformat().replace("+00:00", "Z")
        writer.writerow(["" if record[c] is None else record[c] for c in CSV_COLUMNS])
    return out.getvalue()
