"""`lorafleet trainer`: registered by lorafleet-workers (entry point `lorafleet.commands`)."""

from __future__ import annotations

import asyncio

import click
from lorafleet.cli.common import check_database, database_settings, run_async
from lorafleet.cli.errors import NotConfigured
from lorafleet.core.logging import configure_logging
from lorafleet.core.settings import TrainerSettings


@click.command()
def trainer() -> None:
    """Run a trainer in the foreground: the fine-tuning jobs of LORAFLEET_MODEL_NAME, one at a time."""
    from lorafleet.models.prepare import is_prepared
    from lorafleet.trainer.runner import run_trainer

    settings = database_settings(TrainerSettings)
    if not (settings.resolved_model_path / "config.json").exists() and not is_prepared(settings.resolved_model_path):
        raise NotConfigured(f"No model at {settings.resolved_model_path}; run `lorafleet models prepare`.")
    run_async(check_database(settings))
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(run_trainer(settings))
