"""Closed invoices to Stripe: a customer per tenant, an invoice item per line, then the invoice.

Driven by the ``stripe_outbox`` rows written with each invoice (one exporter per invoice at a
time: the outbox row stays locked while it runs). Every Stripe object carries our id in its
metadata, and before creating anything the exporter looks for an object with our id, so a crash
between Stripe's answer and our commit, or a rerun, never creates a duplicate. Each request also
carries an idempotency key (Stripe's own guard; localstripe ignores it).

Amounts: Stripe bills whole cents, we bill micro-USD. The invoice's amount in cents is its total
rounded half up; lines get whole cents that add up to exactly that (largest remainder), and each
item's metadata keeps its exact micro-USD amount.

The invoice is created after its items, with ``pending_invoice_items_behavior=include`` so it
gathers them. Finalising is left to Stripe (dashboard or automatic collection): localstripe
cannot finalise invoices, so that step is not exercised here.
"""

from __future__ import annotations

import asyncpg
import stripe
import structlog
from lorafleet.db import queries

log = structlog.get_logger("lorafleet.stripe")

MICRO_PER_CENT = 10_000


def cents_half_up(micro_usd: int) -> int:
    return (micro_usd + MICRO_PER_CENT // 2) // MICRO_PER_CENT


def allocate_cents(amounts_micro_usd: list[int]) -> list[int]:
    """Whole cents per line that sum to the rounded total, each within a cent of its exact value."""
    target = cents_half_up(sum(amounts_micro_usd))
    floors = [amount // MICRO_PER_CENT for amount in amounts_micro_usd]
    remainders = [amount - floor * MICRO_PER_CENT for amount, floor in zip(amounts_micro_usd, floors)]
    extra = target - sum(floors)
    order = sorted(range(len(floors)), key=lambda i: (-remainders[i], i))
    for index in order[:extra]:
        floors[index] += 1
    return floors


def _metadata(stripe_object: stripe.StripeObject) -> dict[str, str]:
    return stripe_object.to_dict().get("metadata") or {}


def _line_item_id(line: stripe.StripeObject) -> str | None:
    """The invoice item behind an invoice line (older API versions name it directly, newer under parent)."""
    data = line.to_dict()
    return data.get("invoice_item") or ((data.get("parent") or {}).get("invoice_item_details") or {}).get("invoice_item")


def make_client(api_key: str, api_base: str = "") -> stripe.StripeClient:
    return stripe.StripeClient(api_key, base_addresses={"api": api_base} if api_base else None, max_network_retries=2)


class StripeExporter:
    def __init__(self, pool: asyncpg.Pool, client: stripe.StripeClient, currency: str = "usd") -> None:
        self._pool = pool
        self._client = client
        self._currency = currency

    async def export_pending(self) -> list[str]:
        """Export every pending invoice; returns the ids exported. A failing invoice is retried next run."""
        exported: list[str] = []
        while True:
            failed: tuple[str, stripe.StripeError] | None = None
            async with self._pool.acquire() as connection:
                async with connection.transaction():
                    job = await connection.fetchrow(queries.next_stripe_export)
                    if job is None:
                        return exported
                    try:
                        await self._export(connection, job)
                        await connection.execute(queries.finish_stripe_export, job["invoice_id"])
                        exported.append(job["invoice_id"])
                    except stripe.StripeError as exc:
                        failed = (job["invoice_id"], exc)
                if failed is not None:
                    # Rolled back: what Stripe created is found again by its metadata next run.
                    await connection.execute(queries.fail_stripe_export, failed[0], str(failed[1])[:2000])
                    log.error("stripe_export_failed", invoice_id=failed[0], error=str(failed[1]))
                    raise failed[1]

    async def _export(self, connection: asyncpg.Connection, job: asyncpg.Record) -> None:
        invoice_id = job["invoice_id"]
        customer = job["stripe_customer_id"] or await self._customer(connection, job["tenant_id"], job["tenant_name"])
        lines = await connection.fetch(queries.get_invoice_lines, invoice_id)
        stripe_invoice = job["stripe_invoice_id"] or self._find_invoice(customer, invoice_id)
        if stripe_invoice is not None:
            # The invoice exists, so its items are on it (no longer pending): relink, create nothing.
            on_invoice = {_metadata(line).get("lorafleet_line_id"): _line_item_id(line)
                          for line in self._client.v1.invoices.line_items.list(stripe_invoice).auto_paging_iter()}
            for line in lines:
                if not line["stripe_invoice_item_id"] and on_invoice.get(line["id"]):
                    await connection.execute(queries.set_stripe_invoice_item, line["id"], on_invoice[line["id"]])
            await connection.execute(queries.set_stripe_invoice, invoice_id, stripe_invoice)
            return
        pending = {_metadata(item).get("lorafleet_line_id"): item.id for item in self._items_of(customer)}
        for line, amount in zip(lines, allocate_cents([line["amount_micro_usd"] for line in lines])):
            item_id = line["stripe_invoice_item_id"] or pending.get(line["id"])
            if item_id is None:
                item_id = self._client.v1.invoice_items.create(params={
                    "customer": customer, "amount": amount, "currency": self._currency,
                    "description": line["description"],
                    "metadata": {"lorafleet_line_id": line["id"], "lorafleet_invoice_id": invoice_id,
                                 "amount_micro_usd": str(line["amount_micro_usd"])},
                }, options={"idempotency_key": f"lorafleet-line-{line['id']}"}).id
            await connection.execute(queries.set_stripe_invoice_item, line["id"], item_id)
        stripe_invoice = self._client.v1.invoices.create(params={
            "customer": customer, "pending_invoice_items_behavior": "include",
            "description": f"LoraFleet usage {job['period_start']:%Y-%m}",
            "metadata": {"lorafleet_invoice_id": invoice_id, "total_micro_usd": str(job["total_micro_usd"])},
        }, options={"idempotency_key": f"lorafleet-invoice-{invoice_id}"}).id
        await connection.execute(queries.set_stripe_invoice, invoice_id, stripe_invoice)

    def _find_invoice(self, customer: str, invoice_id: str) -> str | None:
        for invoice in self._client.v1.invoices.list(params={"customer": customer}).auto_paging_iter():
            if _metadata(invoice).get("lorafleet_invoice_id") == invoice_id:
                return invoice.id
        return None

    def _items_of(self, customer: str) -> list[stripe.InvoiceItem]:
        """The customer's items not yet on an invoice."""
        return [item for item in self._client.v1.invoice_items.list(params={"customer": customer}).auto_paging_iter()
                if not item.to_dict().get("invoice")]

    async def _customer(self, connection: asyncpg.Connection, tenant_id: str, name: str) -> str:
        found = [c.id for c in self._client.v1.customers.list().auto_paging_iter()
                 if _metadata(c).get("lorafleet_tenant_id") == tenant_id]
        customer = found[0] if found else self._client.v1.customers.create(
            params={"name": name, "metadata": {"lorafleet_tenant_id": tenant_id}},
            options={"idempotency_key": f"lorafleet-customer-{tenant_id}"}).id
        await connection.execute(queries.set_stripe_customer, tenant_id, customer)
        return customer
