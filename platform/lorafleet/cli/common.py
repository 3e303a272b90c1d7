"""Helpers every CLI module shares: settings, the database URL, running coroutines, output."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import msgspec
from lorafleet.cli.runtime import effective_settings
from lorafleet.core.errors import LoraFleetError
from lorafleet.core.settings import Settings, SettingsError

T = TypeVar("T")


def load_cli_settings() -> Settings:
    try:
        return effective_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def need_database(settings: Settings) -> str:
    if not settings.database_url:
        raise click.ClickException("No database: set LORAFLEET_DATABASE_URL, or run `lorafleet up` first.")
    return settings.database_url


def run_async(coroutine: Awaitable[T]) -> T:
    try:
        return asyncio.run(coroutine)  # type: ignore[arg-type]
    except LoraFleetError as exc:
        raise click.ClickException(exc.message) from None


def emit(document: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(msgspec.json.encode(document).decode())
    else:
        human()


async def with_connection(dsn: str, action: Callable[[Any], Awaitable[T]]) -> T:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        return await action(connection)
    finally:
        await connection.close()


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document to stdout.")
