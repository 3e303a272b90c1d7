"""`lorafleet …`: run the platform and administer it from a shell.

Commands that create or list take ``--json`` and then print exactly one JSON document on stdout,
also when they fail (the API's error envelope). Exit codes and error output: cli/errors.py.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click
from lorafleet.cli.adapters import adapters
from lorafleet.cli.batches import batches
from lorafleet.cli.common import (
    call_audited,
    call_database,
    check_database,
    database_settings,
    emit,
    gateway_base_url,
    json_option,
    log_to_stderr,
    run_async,
    with_json_codec,
)
from lorafleet.cli.errors import CliError, LoraFleetGroup
from lorafleet.cli.fine_tune import fine_tune
from lorafleet.cli.params import KEY_ID, TENANT_ID, format_micro_usd
from lorafleet.cli.plugins import add_plugin_commands
from lorafleet.core.logging import configure_logging
from lorafleet.core.settings import GatewaySettings
from lorafleet.tenancy.keys import ALL_SCOPES

# Processes that run in the foreground and log as servers do (to stdout, LORAFLEET_LOG_FORMAT).
SERVER_COMMANDS = ("gateway", "worker")


@click.group(cls=LoraFleetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show the log lines of what a command calls (on stderr).")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """LoraFleet: serverless multi-LoRA inference with per-token billing."""
    if ctx.invoked_subcommand not in SERVER_COMMANDS:
        log_to_stderr(verbose)


# ---- running the platform -------------------------------------------------------------------

@cli.command()
@click.option("--switch-database", is_flag=True,
              help="Move the platform to the database LORAFLEET_DATABASE_URL names (or, unset, the embedded one) "
                   "instead of the one it remembers; nothing is copied. Run `lorafleet down` first.")
def up(switch_database: bool) -> None:
    """Start database, worker and gateway in the background; create a demo tenant and key."""
    from lorafleet.cli.up import run_up

    run_up(switch_database)


@cli.command()
def down() -> None:
    """Stop everything `lorafleet up` started."""
    from lorafleet.cli.up import run_down

    run_down()


@cli.command()
def gateway() -> None:
    """Run the gateway in the foreground (HTTP on LORAFLEET_GATEWAY_HOST:PORT)."""
    import uvicorn
    from lorafleet.app import create_app

    settings = database_settings(GatewaySettings)
    run_async(check_database(settings))  # a database that is down is one line here, not a startup traceback
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run(
        create_app(settings), host=settings.gateway_host, port=settings.gateway_port,
        log_config=None, access_log=False, loop="uvloop", http="httptools", timeout_graceful_shutdown=30,
        timeout_keep_alive=int(settings.gateway_keepalive_seconds),
        proxy_headers=True, forwarded_allow_ips=settings.forwarded_allow_ips,
    )


@cli.command()
@json_option
def migrate(as_json: bool) -> None:
    """Apply pending database migrations."""
    from lorafleet.db.migrate import migrate as apply

    settings = database_settings()

    async def action() -> list[str]:
        await check_database(settings)
        return await apply(settings.database_url)

    applied = run_async(action())
    emit({"applied": applied}, as_json,
         lambda: click.echo(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}"))


# ---- tenants and keys -----------------------------------------------------------------------

@cli.group()
def tenants() -> None:
    """Tenants."""


@tenants.command("create")
@click.argument("name")
@json_option
def tenants_create(name: str, as_json: bool) -> None:
    """Create a tenant called NAME."""
    from lorafleet.tenancy import TenancyService

    tenant = call_audited(lambda db: TenancyService(db).create_tenant(name), event="organization.created",
                          fields={"name": name}, resource=lambda t: t.id, tenant_id=lambda t: t.id)
    emit(tenant, as_json, lambda: click.echo(f"created tenant {tenant.id} ({tenant.name})"))


@tenants.command("list")
@json_option
def tenants_list(as_json: bool) -> None:
    """Every tenant, oldest first: created, status, billing mode and limits, spend this month."""
    from lorafleet.billing.roster import tenant_roster

    settings = database_settings()
    found = call_database(lambda db: tenant_roster(db, settings.currency), settings=settings)

    def human() -> None:
        if not found:
            click.echo("no tenants")
        for t in found:
            click.echo(f"{t.id}  {t.name[:24]:<24} since {t.created_at:%Y-%m-%d}  {t.status:<19} {t.billing_mode:<8} "
                       f"spent {format_micro_usd(t.period_spent_micro_usd)} of {format_micro_usd(t.monthly_spend_limit_micro_usd)}"
                       f"  credit {format_micro_usd(t.credit_remaining_micro_usd)}"
                       f"  max concurrent {t.max_concurrent_requests or 'none'}")

    emit({"object": "list", "data": found, "has_more": False}, as_json, human)


@cli.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--tenant", "tenant_id", type=TENANT_ID, required=True, help="Tenant id (ten_…).")
@click.option("--name", default="", help="A label for the key.")
@click.option("--scope", "scopes", type=click.Choice(ALL_SCOPES), multiple=True,
              help="Repeat for several; default: all scopes.")
@click.option("--test", "test_mode", is_flag=True, help="Create an sk_test_ key.")
@json_option
def keys_create(tenant_id: str, name: str, scopes: tuple[str, ...], test_mode: bool, as_json: bool) -> None:
    """Create an API key; its secret is printed this once."""
    from lorafleet.tenancy import TenancyService

    created = call_audited(lambda db: TenancyService(db).create_key(
        tenant_id, name=name, scopes=list(scopes) or None, mode="test" if test_mode else "live"),
        event="api_key.created", tenant_id=tenant_id, resource=lambda k: k.id,
        fields={"name": name, "scopes": list(scopes) or None, "mode": "test" if test_mode else "live"})

    def human() -> None:
        click.echo(f"created key {created.id} for {created.tenant_id} (scopes: {', '.join(created.scopes)})")
        click.echo(f"secret (shown once): {created.secret}")

    emit(created, as_json, human)


@keys.command("list")
@click.option("--tenant", "tenant_id", type=TENANT_ID, required=True, help="Tenant id (ten_…).")
@json_option
def keys_list(tenant_id: str, as_json: bool) -> None:
    """List a tenant's keys (never their secrets)."""
    from lorafleet.tenancy import TenancyService

    async def action(db: Any) -> list[Any]:
        service = TenancyService(db)
        await service.get_tenant(tenant_id)
        return await service.all_keys(tenant_id)

    found = call_database(action)

    def human() -> None:
        if not found:
            click.echo("no keys")
        for key in found:
            state = "revoked" if key.revoked_at else "active"
            click.echo(f"{key.id}  {key.display_prefix:<16} {state:<8} {key.name or '-':<20} {','.join(key.scopes)}")

    emit({"object": "list", "data": found, "has_more": False}, as_json, human)


@keys.command("revoke")
@click.argument("key_id", type=KEY_ID)
@json_option
def keys_revoke(key_id: str, as_json: bool) -> None:
    """Revoke KEY_ID; every gateway refuses it within a second."""
    from lorafleet.tenancy import TenancyService

    revoked = call_audited(lambda db: TenancyService(db).revoke_key(key_id), event="api_key.deleted",
                           fields={}, resource=lambda k: k.id, key_id=key_id)
    emit(revoked, as_json, lambda: click.echo(f"revoked {revoked.id}"))


cli.add_command(adapters)
cli.add_command(fine_tune)
cli.add_command(batches)
# worker, trainer, models (lorafleet-workers); billing, prices, credits, limits (lorafleet-billing).
add_plugin_commands(cli)


@cli.group()
def workers() -> None:
    """The fleet's workers."""


@workers.command("list")
@json_option
def workers_list(as_json: bool) -> None:
    """Each worker with its state, load and resident adapters (slots / CPU / disk), polled now."""
    from lorafleet.gateway.fleet.views import WorkerList, list_workers

    settings = database_settings(GatewaySettings)  # it polls the workers as a gateway does

    async def action() -> WorkerList:
        await check_database(settings)  # list_workers opens its own pool: fail first with a clear message
        return await list_workers(settings)

    found = run_async(action())

    def human() -> None:
        if not found.data:
            click.echo("no workers")
        for w in found.data:
            click.echo(f"{w.id}  {w.base_model:<24} {w.state if w.ready else 'unreachable':<11} running {w.running:<3} "
                       f"waiting {w.waiting:<3} kv {w.kv_cache_usage:.0%}  slots {len(w.adapters.slots)}/{w.max_loras} "
                       f"cpu {len(w.adapters.cpu)} disk {len(w.adapters.disk)}  {w.url}")
            for tier in ("slots", "cpu", "pinned"):
                if getattr(w.adapters, tier):
                    click.echo(f"    {tier}: {', '.join(getattr(w.adapters, tier))}")

    emit(found, as_json, human)


@cli.group()
def dashboard() -> None:
    """The web dashboard (served by the gateway under /dashboard)."""


@dashboard.command("link")
@click.option("--tenant", "tenant_id", type=TENANT_ID, required=True, help="Tenant id (ten_…).")
@json_option
def dashboard_link(tenant_id: str, as_json: bool) -> None:
    """Print a one-time sign-in link for a tenant's dashboard (valid 15 minutes).

    The link starts with LORAFLEET_BASE_URL (or the one `lorafleet up` wrote), else the gateway's address."""
    from lorafleet.dashboard.sessions import LINK_SECONDS, create_login_link
    from lorafleet.tenancy import TenancyService

    settings = database_settings(GatewaySettings)

    async def action(db: Any) -> str:
        await TenancyService(db).get_tenant(tenant_id)
        return await create_login_link(db, tenant_id)

    # A sign-in link is a credential handed out: recorded (never the link itself).
    token = call_audited(action, event="login_link.created", fields={}, resource=lambda _: None,
                         tenant_id=tenant_id, settings=settings)
    url = f"{gateway_base_url(settings)}/dashboard/login/{token}"
    emit({"url": url, "expires_in_seconds": LINK_SECONDS}, as_json, lambda: click.echo(url))


@cli.group()
def audit() -> None:
    """The audit log: every change, by whom, from where (append-only)."""


@audit.command("list")
@click.option("--tenant", "tenant_id", type=TENANT_ID, default=None, help="Only this tenant's events (ten_…).")
@click.option("--type", "event_types", multiple=True, help="Only events of this type (repeat for several).")
@click.option("--actor", "actor_ids", multiple=True, help="Only events by this key, session or 'operator'.")
@click.option("--after", default=None, help="The last id of the previous page (older events follow).")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@json_option
def audit_list(tenant_id: str | None, event_types: tuple[str, ...], actor_ids: tuple[str, ...], after: str | None,
               limit: int, as_json: bool) -> None:
    """Audit events, newest first (every tenant's unless --tenant)."""
    from lorafleet.gateway.audit.service import list_events

    async def action(db: Any) -> Any:
        await with_json_codec(db)
        return await list_events(db, tenant_id=tenant_id, after=after, before=None,
                                 event_types=list(event_types) or None, actor_ids=list(actor_ids) or None,
                                 resource_ids=None, since=None, until=None, limit=limit)

    page = call_database(action)

    def human() -> None:
        if not page.data:
            click.echo("no events")
        for event in page.data:
            actor = event["actor"]
            who = (actor.get("api_key") or actor.get("session") or actor.get("operator") or {}).get("id") or "anonymous"
            when = dt.datetime.fromtimestamp(event["effective_at"], dt.UTC)
            click.echo(f"{event['id']}  {when:%Y-%m-%d %H:%M:%S}  {event['type']:<26} {event[event['type']]['id'] or '-':<28} "
                       f"{actor['type']}:{who}  {event['tenant_id'] or '-'}  {event['request_id']}")
        if page.has_more:
            click.echo(f"more: --after {page.last_id}")

    emit(page, as_json, human)


@cli.group()
def webhooks() -> None:
    """Webhook deliveries: the log and replay (tenants manage endpoints through /v1/webhook_endpoints)."""


@webhooks.command("deliveries")
@click.option("--tenant", "tenant_id", type=TENANT_ID, default=None, help="Only this tenant's (ten_…).")
@click.option("--status", type=click.Choice(["pending", "delivered", "failed"]), default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
def webhooks_deliveries(tenant_id: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """Deliveries, newest first: status, attempts, the last status code or error."""
    from lorafleet.db import queries

    rows = call_database(lambda db: db.fetch(queries.operator_webhook_deliveries, tenant_id, status, limit))
    found = [{**dict(row), **{k: row[k].isoformat() if row[k] else None
                              for k in ("next_attempt_at", "delivered_at", "created_at")}} for row in rows]

    def human() -> None:
        if not found:
            click.echo("no deliveries")
        for d in found:
            click.echo(f"{d['id']}  {d['created_at'][:19]}  {d['event_type']:<26} {d['status']:<9} "
                       f"attempts {d['attempts']}  last {d['last_status_code'] or d['last_error'] or '-'}  "
                       f"{d['endpoint_id']}  {d['tenant_id']}")

    emit({"object": "list", "data": found, "has_more": len(found) == limit}, as_json, human)


@webhooks.command("replay")
@click.argument("delivery_id")
@json_option
def webhooks_replay(delivery_id: str, as_json: bool) -> None:
    """Send DELIVERY_ID again now, with the same webhook-id (its event's id)."""
    from lorafleet.db import queries

    async def replay(db: Any) -> dict[str, str]:
        row = await db.fetchrow(queries.operator_replay_webhook_delivery, delivery_id)
        if row is None:
            raise CliError(f"no delivery {delivery_id!r} of a live endpoint", error_type="invalid_request_error",
                           code="not_found")
        return {"id": row["id"], "tenant_id": row["tenant_id"], "status": "pending"}

    replayed = call_audited(replay, event="webhook_delivery.replayed", fields={}, resource=lambda r: r["id"],
                            tenant_id=lambda r: r["tenant_id"])
    emit(replayed, as_json, lambda: click.echo(f"{delivery_id}: due again now"))


@cli.command("settings")
@click.option("--markdown", is_flag=True, help="Print the README's settings table.")
def show_settings(markdown: bool) -> None:
    """Every LORAFLEET_* setting with its default and meaning."""
    from lorafleet.core.settings import documented_settings, settings_markdown

    if markdown:
        click.echo(settings_markdown())
        return
    for role, name, default, description in documented_settings():
        click.echo(f"{name}={default!s:<24} [{role}] {description}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
