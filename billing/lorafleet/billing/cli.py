"""`lorafleet prices|credits|limits|billing …`: the operator's money commands (straight to the database).

Amounts are integer micro-USD, or dollars written as such (``'$1.50'``, ``1.5usd``): see cli/params.py.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click
import msgspec
from lorafleet.cli.common import call_audited, call_database, database_settings, emit, json_option
from lorafleet.cli.errors import CliError, NotConfigured, Unreachable
from lorafleet.cli.params import (
    CLEARED,
    CONCURRENCY,
    CREDIT,
    KEY_ID,
    MONTH,
    PER_MINUTE,
    PRICE,
    SPEND_LIMIT,
    TENANT_ID,
    TIMESTAMP,
    format_micro_usd,
)
from lorafleet.core.settings import BillingSettings

_UNSET = msgspec.UNSET


def _change(value: Any) -> Any:
    """An option's value as a change: absent leaves the setting, ``none`` clears it."""
    if value is None:
        return _UNSET
    return None if value is CLEARED else value


@click.group()
def prices() -> None:
    """Prices per base model (micro-USD per million tokens), versioned."""


@prices.command("set")
@click.argument("base_model")
@click.option("--prompt", type=PRICE, required=True, help="Per million prompt tokens: micro-USD, or dollars ('$0.15').")
@click.option("--completion", type=PRICE, required=True,
              help="Per million completion tokens: micro-USD, or dollars ('$0.60').")
@click.option("--adapter-surcharge", type=PRICE, default=0, show_default=True,
              help="Per million tokens added when a request uses an adapter: micro-USD, or dollars.")
@click.option("--training", type=PRICE, default=0, show_default=True,
              help="Per million trained tokens of a fine-tuning job: micro-USD, or dollars.")
@click.option("--cached-prompt", type=PRICE, default=None,
              help="Per million prompt tokens the engine served from its prefix cache: micro-USD, or dollars "
                   "(at most the prompt price). Default: the prompt price.")
@click.option("--batch-discount-bps", type=click.IntRange(0, 10_000), default=5000, show_default=True,
              help="A batch line's discount in basis points of its synchronous cost (5000: half price).")
@click.option("--effective-at", type=TIMESTAMP, default=None,
              help="When the price takes effect, ISO 8601 (UTC if no zone). Default: now.")
@json_option
def prices_set(base_model: str, prompt: int, completion: int, adapter_surcharge: int, training: int,
               cached_prompt: int | None, batch_discount_bps: int, effective_at: dt.datetime | None,
               as_json: bool) -> None:
    """Add a price version for BASE_MODEL; earlier usage keeps the price it was recorded under."""
    from lorafleet.billing.accounts import AccountService

    price = call_audited(lambda db: AccountService(db).set_price(
        base_model, prompt=prompt, completion=completion, adapter_surcharge=adapter_surcharge, training=training,
        cached_prompt=cached_prompt, batch_discount_bps=batch_discount_bps, effective_at=effective_at),
        event="price.created", resource=lambda p: str(p.id),
        fields={"base_model": base_model, "prompt_micro_usd_per_mtok": prompt,
                "completion_micro_usd_per_mtok": completion, "adapter_surcharge_micro_usd_per_mtok": adapter_surcharge,
                "training_micro_usd_per_mtok": training, "cached_prompt_micro_usd_per_mtok": cached_prompt,
                "batch_discount_bps": batch_discount_bps,
                "effective_at": effective_at.isoformat() if effective_at else None})
    emit(price, as_json, lambda: click.echo(f"price {price.id} for {base_model} from {price.effective_at:%Y-%m-%d %H:%M:%S %Z}"))


@prices.command("list")
@json_option
def prices_list(as_json: bool) -> None:
    """Every price version."""
    from lorafleet.billing.accounts import AccountService

    found = call_database(lambda db: AccountService(db).list_prices())

    def human() -> None:
        for p in found:
            click.echo(f"{p.id:>4}  {p.base_model:<28} from {p.effective_at:%Y-%m-%d %H:%M}  prompt {p.prompt_micro_usd_per_mtok}"
                       f" (cached {p.cached_prompt_micro_usd_per_mtok})  completion {p.completion_micro_usd_per_mtok}  adapter +{p.adapter_surcharge_micro_usd_per_mtok}"
                       f"  training {p.training_micro_usd_per_mtok}  batch -{p.batch_discount_bps / 100:g}%")

    emit({"object": "list", "data": found, "has_more": False}, as_json, human)


@click.group()
def credits() -> None:
    """Tenant credits."""


@credits.command("grant")
@click.option("--tenant", "tenant_id", type=TENANT_ID, required=True, help="Tenant id (ten_…).")
@click.option("--amount", "amount", type=CREDIT, required=True,
              help="Micro-USD, or dollars ('$25'); negative takes credits back.")
@click.option("--reason", default="", help="Shown on the grant.")
@json_option
def credits_grant(tenant_id: str, amount: int, reason: str, as_json: bool) -> None:
    """Grant credits to a tenant."""
    from lorafleet.billing.accounts import AccountService

    grant = call_audited(lambda db: AccountService(db).grant_credit(tenant_id, amount, reason), event="credit.granted",
                         tenant_id=tenant_id, resource=lambda g: g.id,
                         fields={"amount_micro_usd": amount, "reason": reason})
    emit(grant, as_json, lambda: click.echo(f"granted {format_micro_usd(amount)} to {tenant_id} ({grant.id})"))


@click.command("limits")
@click.option("--tenant", "tenant_id", type=TENANT_ID, required=True, help="Tenant id (ten_…).")
@click.option("--mode", type=click.Choice(["postpaid", "prepaid"]), default=None, help="Billing mode.")
@click.option("--monthly-spend-limit", type=SPEND_LIMIT, default=None,
              help="Per calendar month (UTC): micro-USD, dollars ('$50'), or 'none'.")
@click.option("--max-concurrent", type=CONCURRENCY, default=None, help="Concurrent requests, or 'none'.")
@json_option
def tenant_limits(tenant_id: str, mode: str | None, monthly_spend_limit: Any, max_concurrent: Any, as_json: bool) -> None:
    """Set a tenant's billing mode, monthly spend limit and concurrency cap; prints the balance."""
    from lorafleet.billing.accounts import AccountService

    settings = database_settings()
    changed = {name: None if value is CLEARED else value for name, value in
               (("billing_mode", mode), ("monthly_spend_limit_micro_usd", monthly_spend_limit),
                ("max_concurrent_requests", max_concurrent)) if value is not None}
    balance = call_audited(lambda db: AccountService(db, settings.currency).set_limits(
        tenant_id, billing_mode=_UNSET if mode is None else mode,
        monthly_spend_limit_micro_usd=_change(monthly_spend_limit), max_concurrent_requests=_change(max_concurrent)),
        event="organization.updated", tenant_id=tenant_id, resource=lambda _: tenant_id, fields=changed,
        settings=settings)
    emit(balance, as_json, lambda: click.echo(
        f"{tenant_id}: {balance.billing_mode}, limit {format_micro_usd(balance.monthly_spend_limit_micro_usd)}, "
        f"max concurrent {balance.max_concurrent_requests or 'none'}, "
        f"spent this period {format_micro_usd(balance.period_spent_micro_usd)}"))


@click.command("limits")
@click.argument("key_id", type=KEY_ID)
@click.option("--rpm", type=PER_MINUTE, default=None, help="Requests per minute, or 'none'.")
@click.option("--tpm", type=PER_MINUTE, default=None, help="Tokens per minute, or 'none'.")
@json_option
def key_limits(key_id: str, rpm: Any, tpm: Any, as_json: bool) -> None:
    """Set KEY_ID's rate limits."""
    from lorafleet.billing.accounts import AccountService

    changed = {name: None if value is CLEARED else value for name, value in
               (("requests_per_minute", rpm), ("tokens_per_minute", tpm)) if value is not None}
    limits = call_audited(lambda db: AccountService(db).set_key_limits(
        key_id, requests_per_minute=_change(rpm), tokens_per_minute=_change(tpm)),
        event="rate_limit.updated", key_id=key_id, resource=lambda _: key_id, fields=changed)
    emit(limits, as_json, lambda: click.echo(
        f"{key_id}: {limits.requests_per_minute or 'unlimited'} requests/min, {limits.tokens_per_minute or 'unlimited'} tokens/min"))


@click.group()
def billing() -> None:
    """Periods, invoices, rollups and the Stripe export."""


@billing.command("close-period")
@click.option("--month", type=MONTH, default=None, help="YYYY-MM (UTC). Default: the previous month.")
@click.option("--tenant", "tenant_id", type=TENANT_ID, default=None, help="Only this tenant (ten_…). Default: every tenant.")
@json_option
def close_period_command(month: str | None, tenant_id: str | None, as_json: bool) -> None:
    """Invoice MONTH for every tenant with unbilled usage; rerunning changes nothing."""
    from lorafleet.billing.invoices import close_period
    from lorafleet.tenancy import TenancyService

    if month is None:
        first = dt.datetime.now(dt.UTC).date().replace(day=1)
        month = (first - dt.timedelta(days=1)).strftime("%Y-%m")
    chosen = month

    async def action(pool: Any) -> list[str]:
        if tenant_id is not None:
            await TenancyService(pool).get_tenant(tenant_id)  # an unknown tenant is an error, not "nothing to do"
        return await close_period(pool, chosen, tenant_id=tenant_id)

    created = call_database(action, pool=True)
    emit({"month": month, "invoices": created}, as_json,
         lambda: click.echo(f"closed {month}: {len(created)} new invoice(s) {' '.join(created)}".rstrip()))


@billing.command("export-stripe")
@json_option
def export_stripe(as_json: bool) -> None:
    """Send closed invoices to Stripe (needs LORAFLEET_STRIPE_API_KEY); safe to rerun."""
    import stripe
    from lorafleet.billing.stripe_export import StripeExporter, make_client

    settings = database_settings(BillingSettings)
    if not settings.stripe_api_key:
        raise NotConfigured("Stripe is off: set LORAFLEET_STRIPE_API_KEY.")
    client = make_client(settings.stripe_api_key, settings.stripe_api_base)
    try:
        exported = call_database(lambda pool: StripeExporter(pool, client, settings.currency).export_pending(),
                                 pool=True, settings=settings)
    except stripe.APIConnectionError as exc:
        raise Unreachable(f"cannot reach Stripe: {exc.user_message or exc}", code="stripe_unavailable") from None
    except stripe.StripeError as exc:  # the invoice stays pending; a rerun retries it
        raise CliError(f"Stripe refused the export: {exc.user_message or exc}", error_type="server_error",
                       code="stripe_error") from None
    emit({"exported": exported}, as_json, lambda: click.echo(f"exported {len(exported)} invoice(s) {' '.join(exported)}".rstrip()))


@billing.command("rebuild-rollups")
@json_option
def rebuild(as_json: bool) -> None:
    """Recompute the usage rollups and settled spend from the ledger."""
    from lorafleet.billing.rollups import rebuild_rollups

    counts = call_database(rebuild_rollups, pool=True)
    emit(counts, as_json, lambda: click.echo(f"rebuilt {counts['hourly_rows']} hourly and {counts['daily_rows']} daily rows"))
