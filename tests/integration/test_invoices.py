"""Ledger → rollups → invoice → Stripe (localstripe) agree to the micro-dollar; reruns change nothing.

The ledger and rollups hold exact pico-USD; each invoice line rounds its exact sum once, half up.
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import stripe
from lorafleet.billing.invoices import close_period, get_invoice
from lorafleet.billing.ledger_row import LedgerRow
from lorafleet.billing.rollups import rebuild_rollups
from lorafleet.billing.stripe_export import StripeExporter, cents_half_up, make_client
from lorafleet.core import ids
from lorafleet.devtools.services import free_port
from lorafleet.gateway.metering.writer import LedgerWriter

from tests.conftest import REPO_ROOT
from tests.helpers import expected_cost, half_up, set_price, wait_rows

FIRST_PRICE = (1_000_003, 2_000_001)
SECOND_PRICE = (3_000_007, 5_000_011)


@pytest.fixture(scope="module")
def localstripe(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path_factory.mktemp("localstripe") / "localstripe.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "tests.localstripe_server", "--port", str(port), "--from-scratch"],
                               stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "localstripe did not start"
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(10)


def _month_after(day: dt.date) -> dt.date:
    return dt.date(day.year + day.month // 12, day.month % 12 + 1, 1)


def _utc(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def _stripe_state(client: stripe.StripeClient, customer: str) -> tuple[int, list, list]:
    customers = len(list(client.v1.customers.list().auto_paging_iter()))
    invoices = list(client.v1.invoices.list(params={"customer": customer}).auto_paging_iter())
    return customers, [inv.id for inv in invoices], invoices


async def test_ledger_rollups_invoice_and_stripe_agree(gateway, base_env, db, model_name, make_key, localstripe):
    key = await make_key()
    first = await set_price(gateway, base_env, model_name, *FIRST_PRICE)
    sdk = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key.secret, max_retries=0)
    for prompt in ("The first", "The second", "The third"):
        await sdk.completions.create(model=model_name, prompt=prompt, max_tokens=4)
    second = await set_price(gateway, base_env, model_name, *SECOND_PRICE)  # the price changes mid-month
    for prompt in ("A fourth", "A fifth"):
        await sdk.completions.create(model=model_name, prompt=prompt, max_tokens=4)
    await sdk.close()
    await wait_rows(db, key.tenant_id, 5)

    rows = await db.fetch("SELECT * FROM usage_ledger WHERE tenant_id = $1 ORDER BY started_at", key.tenant_id)
    assert [r["price_id"] for r in rows] == [first["id"]] * 3 + [second["id"]] * 2, "earlier rows keep their price"
    for row in rows:
        prices = FIRST_PRICE if row["price_id"] == first["id"] else SECOND_PRICE
        assert row["cost_pico_usd"] == expected_cost(row["prompt_tokens"], row["completion_tokens"], *prices)
    ledger_total = sum(r["cost_pico_usd"] for r in rows)  # exact
    by_price = [sum(r["cost_pico_usd"] for r in rows if r["price_id"] == p["id"]) for p in (first, second)]
    invoice_total = sum(half_up(amount) for amount in by_price)  # a line per price version, each rounded once

    # Rollups agree with the ledger, and a rebuild from the ledger gives the same numbers.
    rollup = await db.fetchval("SELECT sum(cost_pico_usd) FROM usage_daily WHERE tenant_id = $1", key.tenant_id)
    assert rollup == ledger_total
    before = await db.fetch("SELECT * FROM usage_hourly WHERE tenant_id = $1 ORDER BY bucket, api_key_id", key.tenant_id)
    await rebuild_rollups(db)
    after = await db.fetch("SELECT * FROM usage_hourly WHERE tenant_id = $1 ORDER BY bucket, api_key_id", key.tenant_id)
    assert [dict(r) for r in before] == [dict(r) for r in after]

    # Close this month as if it had ended: one invoice, a line per price version, totals = ledger.
    month_start = rows[0]["started_at"].date().replace(day=1)
    month = month_start.strftime("%Y-%m")
    after_month = _utc(_month_after(month_start)) + dt.timedelta(hours=1)
    with pytest.raises(Exception, match="has not ended"):
        await close_period(db, month, tenant_id=key.tenant_id)
    created = await close_period(db, month, now=after_month, tenant_id=key.tenant_id)
    assert len(created) == 1
    invoice = await get_invoice(db, created[0], key.tenant_id)
    usage_lines = [line for line in invoice.lines if line.kind == "usage"]
    assert sorted((line.prompt_micro_usd_per_mtok, line.completion_micro_usd_per_mtok) for line in usage_lines) == \
           sorted([FIRST_PRICE, SECOND_PRICE])
    assert [line.requests for line in sorted(usage_lines, key=lambda u: u.price_id)] == [3, 2]
    assert [(line.amount_pico_usd, line.amount_micro_usd) for line in sorted(usage_lines, key=lambda u: u.price_id)] == \
           [(amount, half_up(amount)) for amount in by_price]
    assert invoice.subtotal_micro_usd == invoice_total == sum(line.amount_micro_usd for line in usage_lines)
    assert invoice.total_micro_usd == invoice_total and invoice.credit_applied_micro_usd == 0
    assert await close_period(db, month, now=after_month, tenant_id=key.tenant_id) == []  # idempotent

    # Export to Stripe; a rerun (and a rerun of close-period) creates nothing new.
    client = make_client("sk_test_lorafleet", localstripe)
    exporter = StripeExporter(db, client)
    assert created[0] in await exporter.export_pending()
    account = await db.fetchrow("SELECT stripe_customer_id FROM tenant_accounts WHERE tenant_id = $1", key.tenant_id)
    customer = account["stripe_customer_id"]
    count_before, ids_before, stripe_invoices = _stripe_state(client, customer)
    assert len(stripe_invoices) == 1
    stripe_invoice = stripe_invoices[0]
    assert stripe_invoice.metadata["lorafleet_invoice_id"] == invoice.id
    assert stripe_invoice.subtotal == cents_half_up(invoice_total)
    item_ids = [line.stripe_invoice_item_id for line in (await get_invoice(db, invoice.id, None)).lines]
    items = [client.v1.invoice_items.retrieve(item_id) for item_id in item_ids]
    assert sum(int(item.metadata["amount_micro_usd"]) for item in items) == invoice_total
    assert sum(item.amount for item in items) == cents_half_up(invoice_total)

    assert await exporter.export_pending() == []
    await db.execute("UPDATE stripe_outbox SET status = 'pending' WHERE invoice_id = $1", invoice.id)  # as after a crash
    await db.execute("UPDATE invoice_lines SET stripe_invoice_item_id = NULL WHERE invoice_id = $1", invoice.id)
    await db.execute("UPDATE invoices SET stripe_invoice_id = NULL WHERE id = $1", invoice.id)
    assert await exporter.export_pending() == [invoice.id]
    assert _stripe_state(client, customer)[:2] == (count_before, ids_before), "a rerun must not bill twice"
    relinked = await get_invoice(db, invoice.id, None)
    assert relinked.stripe_invoice_id == stripe_invoice.id
    assert [line.stripe_invoice_item_id for line in relinked.lines] == item_ids

    # A row for the closed month that arrives late goes to the next invoice as an adjustment.
    writer = LedgerWriter(db)
    writer.start()
    late_started = rows[0]["started_at"]
    late = LedgerRow(
        request_id=ids.request_id(), tenant_id=key.tenant_id, api_key_id=key.key_id,
        base_model_id=rows[0]["base_model_id"], model=model_name, endpoint="completions", outcome="success",
        http_status=200, streamed=False, prompt_tokens=7, completion_tokens=11, worker_url=None,
        started_at=late_started, finished_at=late_started, ttft_ms=1, duration_ms=2,
        cost_pico_usd=expected_cost(7, 11, *FIRST_PRICE), price_id=first["id"])
    writer.record(late)
    await writer.drain()
    await writer.close()
    next_month = _month_after(month_start)
    created_next = await close_period(db, next_month.strftime("%Y-%m"), now=_utc(_month_after(next_month)),
                                      tenant_id=key.tenant_id)
    adjustment = await get_invoice(db, created_next[0], key.tenant_id)
    late_amount = half_up(late.cost_pico_usd)
    assert [(line.kind, line.amount_micro_usd) for line in adjustment.lines] == [("adjustment", late_amount)]
    assert adjustment.lines[0].description.startswith(f"Adjustment for {month}")
    unchanged = await get_invoice(db, invoice.id, key.tenant_id)
    assert unchanged.total_micro_usd == invoice_total and len(unchanged.lines) == len(invoice.lines)
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1 AND invoice_id IS NULL",
                             key.tenant_id) == 0

    # An exporter that died after creating an item but before recording it: the rerun adopts it.
    orphan = client.v1.invoice_items.create(params={
        "customer": customer, "amount": cents_half_up(late_amount), "currency": "usd",
        "metadata": {"lorafleet_line_id": adjustment.lines[0].id, "lorafleet_invoice_id": adjustment.id,
                     "amount_micro_usd": str(late_amount)}})
    assert await exporter.export_pending() == [adjustment.id]
    exported_adjustment = await get_invoice(db, adjustment.id, None)
    assert exported_adjustment.lines[0].stripe_invoice_item_id == orphan.id
    stripe_lines = list(client.v1.invoices.line_items.list(exported_adjustment.stripe_invoice_id).auto_paging_iter())
    assert [line.to_dict()["invoice_item"] for line in stripe_lines] == [orphan.id]

    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {key.secret}"}) as http:
        listed = (await http.get("/v1/invoices")).json()["data"]
        assert [i["id"] for i in listed] == [adjustment.id, invoice.id]
        shown = (await http.get(f"/v1/invoices/{invoice.id}")).json()
        assert shown["total_micro_usd"] == invoice_total and shown["stripe_invoice_id"] == stripe_invoice.id
    stranger = await make_key()
    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {stranger.secret}"}) as http:
        assert (await http.get(f"/v1/invoices/{invoice.id}")).status_code == 404
        assert (await http.get("/v1/invoices")).json()["data"] == []


async def test_credits_are_applied_on_the_invoice(gateway, base_env, db, model_name, make_key):
    key = await make_key()
    await set_price(gateway, base_env, model_name, *FIRST_PRICE)
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key.secret, max_retries=0) as sdk:
        await sdk.completions.create(model=model_name, prompt="Credit me", max_tokens=4)
    await wait_rows(db, key.tenant_id, 1)
    exact = await db.fetchval("SELECT sum(cost_pico_usd) FROM usage_ledger WHERE tenant_id = $1", key.tenant_id)
    spent = half_up(int(exact))  # the invoice's one line
    credit = spent // 3
    await db.execute("UPDATE tenant_accounts SET credit_granted_micro_usd = $2 WHERE tenant_id = $1", key.tenant_id,
                     credit)
    started = await db.fetchval("SELECT min(started_at) FROM usage_ledger WHERE tenant_id = $1", key.tenant_id)
    month_start = started.date().replace(day=1)
    created = await close_period(db, month_start.strftime("%Y-%m"), now=_utc(_month_after(month_start)),
                                 tenant_id=key.tenant_id)
    invoice = await get_invoice(db, created[0], key.tenant_id)
    assert invoice.credit_applied_micro_usd == credit
    assert invoice.total_micro_usd == spent - credit
    assert invoice.lines[-1].kind == "credit" and invoice.lines[-1].amount_micro_usd == -credit
    assert sum(line.amount_micro_usd for line in invoice.lines) == invoice.total_micro_usd
