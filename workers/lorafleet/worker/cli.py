"""`lorafleet worker`: registered by lorafleet-workers (entry point `lorafleet.commands`)."""

from __future__ import annotations

import asyncio

import click
from lorafleet.cli.common import check_database, database_settings, run_async
from lorafleet.cli.errors import NotConfigured
from lorafleet.core.logging import configure_logging
from lorafleet.core.settings import WorkerSettings


@click.command()
def worker() -> None:
    """Run a worker in the foreground: vLLM for the base model, supervised and registered."""
    from lorafleet.models.prepare import is_prepared
    from lorafleet.worker.supervisor import WorkerSupervisor

    settings = database_settings(WorkerSettings)
    if not settings.internal_token:
        raise NotConfigured("Set LORAFLEET_INTERNAL_TOKEN (the gateway uses it to reach the worker).")
    if not (settings.resolved_model_path / "config.json").exists() and not is_prepared(settings.resolved_model_path):
        raise NotConfigured(f"No model at {settings.resolved_model_path}; run `lorafleet models prepare`.")
    run_async(check_database(settings))
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(WorkerSupervisor(settings).run())
