"""`lorafleet prices|credits|limits|billing …`: the operator's money commands (straight to the database)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import msgspec
from lorafleet.cli.common import (
    emit,
    json_option,
    load_cli_settings,
    need_database,
    run_async,
)

T = TypeVar("T")
_UNSET = msgspec.UNSET


def _with_pool(action: Callable[[Any], Awaitable[T]]) -> T:
    async def run() -> T:
        from lorafleet.db import create_pool

        pool = await create_pool(need_database(load_cli_settings()), max_size=2)
        try:
            return await action(pool)
        finally:
            await pool.close()

    return run_async(run())


def _usd(micro: int | None) -> str:
    return "none" if micro is None else f"${micro / 1_000_000:,.6f}"


def _limit(value: str | None) -> Any:
    """'none' clears a limit, absent leaves it."""
    if value is None:
        return _UNSET
    return None if value.lower() == "none" else int(value)


@click.group()
def prices() -> None:
    """Prices per base model (integer micro-USD per million tokens), versioned."""


@prices.command("set")
@click.argument("base_model")
@click.option("--prompt", type=click.IntRange(min=0), required=True, help="Micro-USD per million prompt tokens.")
@click.option("--completion", type=click.IntRange(min=0), required=True, help="Micro-USD per million completion tokens.")
@click.option("--adapter-surcharge", type=click.IntRange(min=0), default=0, show_default=True,
              help="Micro-USD per million tokens added when a request uses an adapter.")
@click.option("--effective-at", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]), default=None,
              help="When the price takes effect (UTC if no zone). Default: now.")
@json_option
def prices_set(base_model: str, prompt: int, completion: int, adapter_surcharge: int, effective_at: dt.datetime | None,
               as_json: bool) -> None:
    """Add a price version for BASE_MODEL; earlier usage keeps the price it was recorded under."""
    from lorafleet.billing.accounts import AccountService

    if effective_at is not None and effective_at.tzinfo is None:
        effective_at = effective_at.replace(tzinfo=dt.UTC)
    price = _with_pool(lambda pool: AccountService(pool).set_price(
        base_model, prompt=prompt, completion=completion, adapter_surcharge=adapter_surcharge, effective_at=effective_at))
    emit(price, as_json, lambda: click.echo(f"price {price.id} for {base_model} from {price.effective_at:%Y-%m-%d %H:%M:%S %Z}"))


@prices.command("list")
@json_option
def prices_list(as_json: bool) -> None:
    """Every price version."""
    from lorafleet.billing.accounts import AccountService

    found = _with_pool(lambda pool: AccountService(pool).list_prices())

    def human() -> None:
        for p in found:
            click.echo(f"{p.id:>4}  {p.base_model:<28} from {p.effective_at:%Y-%m-%d %H:%M}  prompt {p.prompt_micro_usd_per_mtok}"
                       f"  completion {p.completion_micro_usd_per_mtok}  adapter +{p.adapter_surcharge_micro_usd_per_mtok}")

    emit({"object": "list", "data": found, "has_more": False}, as_json, human)


@click.group()
def credits() -> None:
    """Tenant credits."""


@credits.command("grant")
@click.option("--tenant", "tenant_id", required=True, help="Tenant id (ten_…).")
@click.option("--amount", "amount", type=int, required=True, help="Micro-USD (negative takes credits back).")
@click.option("--reason", default="", help="Shown on the grant.")
@json_option
def credits_grant(tenant_id: str, amount: int, reason: str, as_json: bool) -> None:
    """Grant credits to a tenant."""
    from lorafleet.billing.accounts import AccountService

    grant = _with_pool(lambda pool: AccountService(pool).grant_credit(tenant_id, amount, reason))
    emit(grant, as_json, lambda: click.echo(f"granted {_usd(amount)} to {tenant_id} ({grant.id})"))


@click.command("limits")
@click.option("--tenant", "tenant_id", required=True, help="Tenant id (ten_…).")
@click.option("--mode", type=click.Choice(["postpaid", "prepaid"]), default=None, help="Billing mode.")
@click.option("--monthly-spend-limit", default=None, help="Micro-USD per calendar month (UTC), or 'none'.")
@click.option("--max-concurrent", default=None, help="Concurrent requests, or 'none'.")
@json_option
def tenant_limits(tenant_id: str, mode: str | None, monthly_spend_limit: str | None, max_concurrent: str | None,
                  as_json: bool) -> None:
    """Set a tenant's billing mode, monthly spend limit and concurrency cap; prints the balance."""
    from lorafleet.billing.accounts import AccountService

    balance = _with_pool(lambda pool: AccountService(pool).set_limits(
        tenant_id, billing_mode=_UNSET if mode is None else mode,
        monthly_spend_limit_micro_usd=_limit(monthly_spend_limit), max_concurrent_requests=_limit(max_concurrent)))
    emit(balance, as_json, lambda: click.echo(
        f"{tenant_id}: {balance.billing_mode}, limit {_usd(balance.monthly_spend_limit_micro_usd)}, "
        f"max concurrent {balance.max_concurrent_requests or 'none'}, spent this period {_usd(balance.period_spent_micro_usd)}"))


@click.command("limits")
@click.argument("key_id")
@click.option("--rpm", default=None, help="Requests per minute, or 'none'.")
@click.option("--tpm", default=None, help="Tokens per minute, or 'none'.")
@json_option
def key_limits(key_id: str, rpm: str | None, tpm: str | None, as_json: bool) -> None:
    """Set KEY_ID's rate limits."""
    from lorafleet.billing.accounts import AccountService

    limits = _with_pool(lambda pool: AccountService(pool).set_key_limits(
        key_id, requests_per_minute=_limit(rpm), tokens_per_minute=_limit(tpm)))
    emit(limits, as_json, lambda: click.echo(
        f"{key_id}: {limits.requests_per_minute or 'unlimited'} requests/min, {limits.tokens_per_minute or 'unlimited'} tokens/min"))


@click.group()
def billing() -> None:
    """Periods, invoices, rollups and the Stripe export."""


@billing.command("close-period")
@click.option("--month", default=None, help="YYYY-MM (UTC). Default: the previous month.")
@click.option("--tenant", "tenant_id", default=None, help="Only this tenant (ten_…). Default: every tenant.")
@json_option
def close_period_command(month: str | None, tenant_id: str | None, as_json: bool) -> None:
    """Invoice MONTH for every tenant with unbilled usage; rerunning changes nothing."""
    from lorafleet.billing.invoices import close_period

    if month is None:
        first = dt.datetime.now(dt.UTC).date().replace(day=1)
        month = (first - dt.timedelta(days=1)).strftime("%Y-%m")
    created = _with_pool(lambda pool: close_period(pool, month, tenant_id=tenant_id))
    emit({"month": month, "invoices": created}, as_json,
         lambda: click.echo(f"closed {month}: {len(created)} new invoice(s) {' '.join(created)}".rstrip()))


@billing.command("export-stripe")
@json_option
def export_stripe(as_json: bool) -> None:
    """Send closed invoices to Stripe (needs LORAFLEET_STRIPE_API_KEY); safe to rerun."""
    from lorafleet.billing.stripe_export import StripeExporter, make_client

    settings = load_cli_settings()
    if not settings.stripe_api_key:
        raise click.ClickException("Stripe is off: set LORAFLEET_STRIPE_API_KEY.")
    client = make_client(settings.stripe_api_key, settings.stripe_api_base)
    exported = _with_pool(lambda pool: StripeExporter(pool, client, settings.currency).export_pending())
    emit({"exported": exported}, as_json, lambda: click.echo(f"exported {len(exported)} invoice(s) {' '.join(exported)}".rstrip()))


@billing.command("rebuild-rollups")
@json_option
def rebuild(as_json: bool) -> None:
    """Recompute the usage rollups and settled spend from the ledger."""
    from lorafleet.billing.rollups import rebuild_rollups

    counts = _with_pool(rebuild_rollups)
    emit(counts, as_json, lambda: click.echo(f"rebuilt {counts['hourly_rows']} hourly and {counts['daily_rows']} daily rows"))
