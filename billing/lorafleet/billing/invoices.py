"""Monthly invoices: closing a period, and reading invoices back.

Closing month M bills, per tenant, every ledger row not yet billed that started before M ended:
rows of M become usage lines, rows of earlier months (they arrived after their own invoice was
closed) become adjustment lines. A row is billed by setting its ``invoice_id`` once, in the same
transaction that writes the invoice, so a closed invoice is never rewritten and no row is billed
twice. Closing is idempotent: a tenant that already has an invoice for M is skipped.

Lines group rows by base model, adapter and price version; a line's amount is the exact sum of its
rows' costs (pico-USD, kept as ``amount_pico_usd``) rounded once, half up, to whole micro-USD
(billing/pricing.py), so a line is within half a micro-dollar of the ledger however many rows it
bills — a million one-token requests cost what one million-token request costs. The subtotal is
the sum of the lines. Credits are applied last, up to the subtotal.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec
from lorafleet.billing.pricing import micro_usd
from lorafleet.core import ids
from lorafleet.core.errors import InvalidRequest, NotFound
from lorafleet.core.types import Page, page_of
from lorafleet.db import queries


class InvoiceLine(msgspec.Struct, kw_only=True):
    id: str
    position: int
    kind: str
    description: str
    base_model_id: str | None
    adapter_id: str | None
    price_id: int | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    prompt_micro_usd_per_mtok: int | None
    completion_micro_usd_per_mtok: int | None
    adapter_surcharge_micro_usd_per_mtok: int | None
    amount_micro_usd: int
    amount_pico_usd: int | None = None   # exact, before the line's one rounding (None: a credit line)
    stripe_invoice_item_id: str | None = None
    cached_prompt_tokens: int = 0        # of prompt_tokens: served from the engine's prefix cache
    cached_prompt_micro_usd_per_mtok: int | None = None
    batch_discount_bps: int | None = None  # a line of batch usage: the discount its price version gave
    object: str = "invoice_line"


class Invoice(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    period_start: dt.date
    period_end: dt.date
    subtotal_micro_usd: int
    credit_applied_micro_usd: int
    total_micro_usd: int
    created_at: dt.datetime
    stripe_invoice_id: str | None
    stripe_exported_at: dt.datetime | None
    stripe_status: str | None
    currency: str = "usd"
    lines: list[InvoiceLine] | None = None
    object: str = "invoice"


def month_bounds(month: str) -> tuple[dt.date, dt.date]:
    """``2026-11`` → (2026-11-01, 2026-12-01)."""
    try:
        start = dt.date.fromisoformat(f"{month}-01")
    except ValueError:
        raise InvalidRequest(f"month must look like 2026-11, got {month!r}", param="month") from None
    end = dt.date(start.year + start.month // 12, start.month % 12 + 1, 1)
    return start, end


def _utc(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def _price_text(micro_per_mtok: int | None) -> str:
    return "unpriced" if micro_per_mtok is None else f"${micro_per_mtok / 1_000_000:g}/M"


def _describe(group: asyncpg.Record) -> str:
    if group["training"]:  # fine-tuning jobs: their trained tokens are the line's prompt tokens
        text = (f"{group['model']} fine-tuning: {group['requests']} job(s), {group['prompt_tokens']} trained tokens "
                f"(training {_price_text(group['training_micro_usd_per_mtok'])})")
        if group["late"]:
            text = f"Adjustment for {group['first_started_at']:%Y-%m}: {text}, recorded after that period closed"
        return text
    model = group["model"] + (f" / adapter {group['adapter'] or group['adapter_id']}" if group["adapter_id"] else "")
    prices = (f"prompt {_price_text(group['prompt_micro_usd_per_mtok'])}, "
              f"completion {_price_text(group['completion_micro_usd_per_mtok'])}")
    cached = group["cached_prompt_micro_usd_per_mtok"]
    if cached is not None and cached != group["prompt_micro_usd_per_mtok"]:
        prices += f", cached prompt {_price_text(cached)}"
    if group["adapter_id"] and group["adapter_surcharge_micro_usd_per_mtok"]:
        prices += f", adapter surcharge {_price_text(group['adapter_surcharge_micro_usd_per_mtok'])}"
    if group["batch"]:
        prices += f", batch discount {(group['batch_discount_bps'] or 0) / 100:g}%"
        model += " batch"
    text = f"{model} ({prices})"
    if group["late"]:
        text = f"Adjustment for {group['first_started_at']:%Y-%m}: {text}, recorded after that period closed"
    return text


async def close_period(pool: asyncpg.Pool, month: str, *, now: dt.datetime | None = None,
                       tenant_id: str | None = None) -> list[str]:
    """Close ``month`` for every tenant (or one) with unbilled usage; returns the invoices created now."""
    start, end = month_bounds(month)
    now = now or dt.datetime.now(dt.UTC)
    if _utc(end) > now:
        raise InvalidRequest(f"{month} has not ended yet; it can be closed from {end.isoformat()} 00:00 UTC",
                             param="month")
    created = []
    for record in await pool.fetch(queries.tenants_to_invoice, _utc(end), tenant_id):
        async with pool.acquire() as connection, connection.transaction():
            invoice_id = await _close_tenant(connection, record["tenant_id"], start, end)
            if invoice_id is not None:
                created.append(invoice_id)
    return created


async def _close_tenant(connection: asyncpg.Connection, tenant_id: str, start: dt.date, end: dt.date) -> str | None:
    await connection.execute(queries.lock_tenant_account, tenant_id)  # one closer per tenant at a time
    if await connection.fetchval(queries.find_invoice_for_period, tenant_id, start) is not None:
        return None
    invoice_id = ids.invoice_id()
    await connection.execute(queries.claim_unbilled_rows, tenant_id, invoice_id, _utc(end))
    groups = await connection.fetch(queries.invoice_usage_groups, tenant_id, invoice_id, _utc(start))
    if not groups:
        return None
    lines = [
        dict(kind="adjustment" if g["late"] else "usage", description=_describe(g), base_model_id=g["base_model_id"],
             adapter_id=g["adapter_id"], price_id=g["price_id"], requests=g["requests"],
             prompt_tokens=g["prompt_tokens"], completion_tokens=g["completion_tokens"],
             prompt_micro_usd_per_mtok=g["prompt_micro_usd_per_mtok"],
             completion_micro_usd_per_mtok=g["completion_micro_usd_per_mtok"],
             adapter_surcharge_micro_usd_per_mtok=g["adapter_surcharge_micro_usd_per_mtok"],
             amount_micro_usd=micro_usd(int(g["amount_pico"])), amount_pico_usd=g["amount_pico"],
             cached_prompt_tokens=g["cached_prompt_tokens"],
             cached_prompt_micro_usd_per_mtok=g["cached_prompt_micro_usd_per_mtok"],
             batch_discount_bps=g["batch_discount_bps"] if g["batch"] else None)
        for g in groups
    ]
    subtotal = sum(line["amount_micro_usd"] for line in lines)
    available = max(0, await connection.fetchval(queries.credit_available, tenant_id) or 0)
    credit = min(subtotal, available)
    if credit:
        lines.append(dict(kind="credit", description="Credits applied", base_model_id=None, adapter_id=None,
                          price_id=None, requests=0, prompt_tokens=0, completion_tokens=0,
                          prompt_micro_usd_per_mtok=None, completion_micro_usd_per_mtok=None,
                          adapter_surcharge_micro_usd_per_mtok=None, amount_micro_usd=-credit, amount_pico_usd=None,
                          cached_prompt_tokens=0, cached_prompt_micro_usd_per_mtok=None, batch_discount_bps=None))
    await connection.execute(queries.insert_invoice, invoice_id, tenant_id, start, end, subtotal, credit,
                             subtotal - credit)
    columns = ["kind", "description", "base_model_id", "adapter_id", "price_id", "requests", "prompt_tokens",
               "completion_tokens", "prompt_micro_usd_per_mtok", "completion_micro_usd_per_mtok",
               "adapter_surcharge_micro_usd_per_mtok", "amount_micro_usd", "amount_pico_usd", "cached_prompt_tokens",
               "cached_prompt_micro_usd_per_mtok", "batch_discount_bps"]
    await connection.execute(
        queries.insert_invoice_lines, [ids.invoice_line_id() for _ in lines], [invoice_id] * len(lines),
        list(range(1, len(lines) + 1)), *([line[c] for line in lines] for c in columns))
    await connection.execute(queries.enqueue_stripe_export, invoice_id)
    return invoice_id


async def list_invoices(db: asyncpg.Pool | asyncpg.Connection, tenant_id: str, *, after: str | None = None,
                        limit: int = 24) -> Page[Invoice]:
    """One page of the tenant's invoices, newest first (``after``: the last id of the previous page)."""
    rows = await db.fetch(queries.list_invoices, tenant_id, after, limit + 1)
    return page_of([Invoice(**dict(row)) for row in rows], limit)


async def get_invoice(db: asyncpg.Pool | asyncpg.Connection, invoice_id: str, tenant_id: str | None) -> Invoice:
    """With lines. ``tenant_id`` None: any tenant (operator); otherwise another tenant's is not found."""
    row = await db.fetchrow(queries.get_invoice, invoice_id, tenant_id)
    if row is None:
        raise NotFound(f"no invoice {invoice_id!r}", param="invoice_id")
    lines = [_line(line) for line in await db.fetch(queries.get_invoice_lines, invoice_id)]
    return Invoice(**dict(row), lines=lines)


def _line(row: asyncpg.Record) -> InvoiceLine:
    fields = dict(row)
    if fields["amount_pico_usd"] is not None:
        fields["amount_pico_usd"] = int(fields["amount_pico_usd"])  # numeric: a whole number of pico-USD
    return InvoiceLine(**fields)
