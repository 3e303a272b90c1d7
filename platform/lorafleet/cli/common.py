"""Helpers every CLI module shares: settings, the database, running coroutines, output."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import click
import msgspec
from lorafleet.cli.errors import CliError, NotConfigured, Unreachable
from lorafleet.cli.runtime import RuntimeFiles, effective_settings
from lorafleet.core.settings import CommonSettings, GatewaySettings, S, SettingsError

T = TypeVar("T")
Database = asyncpg.Connection | asyncpg.Pool


def load_cli_settings(kind: type[S] = CommonSettings) -> S:  # type: ignore[assignment]
    """``kind``'s settings (a command reads only the role it acts as), completed from the data dir."""
    try:
        return effective_settings(kind)
    except SettingsError as exc:
        raise NotConfigured(str(exc)) from None


def database_settings(kind: type[S] = CommonSettings) -> S:  # type: ignore[assignment]
    """``kind``'s settings, with a database URL (from the environment or what `lorafleet up` left in the data dir)."""
    settings = load_cli_settings(kind)
    if not settings.database_url:
        raise NotConfigured("No database: set LORAFLEET_DATABASE_URL, or run `lorafleet up` first.")
    return settings


def database_label(dsn: str) -> str:
    """Where a DSN points, for messages: host, port and database, never the password."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "the configured database"
    name = parts.path.lstrip("/") or parts.username or "postgres"
    return f"{host}:{port}/{name}"


# What asyncpg raises when it cannot open a connection: the network (refused, unknown host, timeout)
# or the server (no such database, bad credentials, starting up or shutting down, full).
_CONNECT_FAILURES = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _unreachable(settings: CommonSettings, exc: BaseException) -> Unreachable:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return Unreachable(f"cannot reach the database at {database_label(settings.database_url)}: {reason}",
                       code="database_unavailable")


@asynccontextmanager
async def open_database(settings: CommonSettings, *, pool: bool = False) -> AsyncIterator[Database]:
    """One connection (or a small pool) to the platform's database; a failure to connect is one clear error."""
    from lorafleet.db import create_pool

    try:
        database: Database = (await create_pool(settings.database_url, max_size=2) if pool
                              else await asyncpg.connect(settings.database_url))
    except ValueError as exc:  # asyncpg's ClientConfigurationError, or a part of the URL it could not parse
        raise NotConfigured(f"the database URL (LORAFLEET_DATABASE_URL) is not a usable PostgreSQL URL: {exc}") from None
    except _CONNECT_FAILURES as exc:
        raise _unreachable(settings, exc) from None
    try:
        yield database
    finally:
        await database.close()


async def check_database(settings: CommonSettings) -> None:
    """Fail early and clearly when the database cannot be reached (for services that open their own)."""
    async with open_database(settings):
        pass


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except asyncpg.PostgresConnectionError as exc:  # lost mid-command (the server went away)
        raise Unreachable(f"lost the database connection: {exc}", code="database_unavailable") from None
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError) as exc:
        raise CliError(f"the database has no LoraFleet schema, or an older one ({exc}); run `lorafleet migrate`",
                       error_type="server_error", code="database_not_migrated") from None


def call_database(action: Callable[[Any], Awaitable[T]], *, pool: bool = False, settings: CommonSettings | None = None) -> T:
    """Run ``action`` on the platform's database (a connection, or a pool with ``pool=True``) and return its result."""
    settings = settings or database_settings()

    async def run() -> T:
        async with open_database(settings, pool=pool) as database:
            return await action(database)

    return run_async(run())


def gateway_base_url(settings: GatewaySettings) -> str:
    """The gateway's URL as a client reaches it: LORAFLEET_BASE_URL (environment or `lorafleet up`'s demo.env),
    else the bind address (a wildcard bind is reached on the loopback)."""
    import os

    configured = os.environ.get("LORAFLEET_BASE_URL") or read_demo_env(settings).get("LORAFLEET_BASE_URL")
    if configured:
        return configured.rstrip("/")
    host = "127.0.0.1" if settings.gateway_host in ("0.0.0.0", "::", "") else settings.gateway_host
    return f"http://{host}:{settings.gateway_port}"


def read_demo_env(settings: CommonSettings) -> dict[str, str]:
    """What `lorafleet up` wrote for clients (.lorafleet/demo.env); empty without it."""
    path = RuntimeFiles(settings.data_path).demo_env
    try:
        text = path.read_text()
    except (FileNotFoundError, PermissionError):
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def log_to_stderr(verbose: bool) -> None:
    """The services a command calls log as they do in a server; here those lines go to stderr (stdout is the
    command's output, one JSON document with --json), and only with --verbose: the command reports its own outcome."""
    import logging
    import sys

    import structlog

    level = logging.INFO if verbose else logging.CRITICAL
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,  # `gateway` and `worker` configure their own logging afterwards
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def emit(document: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(msgspec.json.encode(document).decode())
    else:
        human()


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON document to stdout (an error too: the API's error envelope).")


async def with_json_codec(db: Any) -> None:
    """jsonb as Python values on this connection, as on the gateway's pool (the audit log's details are jsonb)."""
    from lorafleet.db.pool import init_connection

    if isinstance(db, asyncpg.Connection):
        await init_connection(db)


def call_audited(action: Callable[[Any], Awaitable[T]], *, event: str, fields: dict[str, Any],
                 resource: Callable[[T], str | None], tenant_id: str | None | Callable[[T], str] = None,
                 key_id: str | None = None, settings: CommonSettings | None = None) -> T:
    """:func:`call_database` for a command that changes something: the change and its audit event
    (tenancy/audit.py) commit in one transaction, so neither exists without the other. The actor is
    the operator at this shell (``cli:<user>``): these commands reach the database directly."""
    import getpass

    from lorafleet.tenancy.audit import Actor, record_event

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    actor = Actor("operator", f"cli:{user}"[:64], None, None, "lorafleet-cli")

    async def audited(db: Any) -> T:
        await with_json_codec(db)
        async with db.transaction():
            result = await action(db)
            tenant = tenant_id(result) if callable(tenant_id) else tenant_id
            await record_event(db, event=event, actor=actor, tenant_id=tenant, resource_id=resource(result),
                               fields=fields, key_id=key_id)
        return result

    return call_database(audited, settings=settings)
