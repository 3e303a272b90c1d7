"""`lorafleet fine-tune …`: a tenant's fine-tuning jobs through the gateway's HTTP API, with the tenant's key.

`create` uploads the training file (`/v1/files`, purpose fine-tune) and starts the job; with `--follow`
(on `create` and `events`) a progress bar follows the training steps until the job ends.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import click
import msgspec
from lorafleet.cli.adapters import Gateway, _multipart, gateway_options
from lorafleet.cli.common import json_option

ENDED = ("succeeded", "failed", "cancelled")


@click.group("fine-tune")
def fine_tune() -> None:
    """A tenant's fine-tuning jobs (through the gateway, with the tenant's API key)."""


def _number(value: str | None) -> int | float | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is neither a number nor 'auto'") from None


def _line(job: dict[str, Any]) -> str:
    model = job.get("fine_tuned_model") or "-"
    error = f"  error: {job['error']['message']}" if job.get("error") else ""
    return f"{job['id']}  {job['status']:<16} {job['model']:<24} {model}{error}"


def _follow(gateway: Gateway, job_id: str) -> dict[str, Any]:
    """Poll until the job ends, a progress bar over its training steps on stderr; the final job."""
    stderr = click.get_text_stream("stderr")
    status, done = "", 0
    with click.progressbar(length=1000, label="training", file=stderr, show_eta=False) as bar:
        while True:
            job = gateway.call("GET", f"/v1/fine_tuning/jobs/{job_id}")
            if job["status"] != status:
                status = job["status"]
                click.echo(f"\n{job_id}: {status}", err=True)
            events = gateway.call("GET", f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1})["data"]
            metrics = [e for e in events if e["type"] == "metrics"]
            if metrics:
                data = metrics[0]["data"]
                target = int(1000 * data["step"] / max(1, data["total_steps"]))
                if target > done:
                    bar.label = f"step {data['step']}/{data['total_steps']}, loss {data['train_loss']:.3f}"
                    bar.update(target - done)
                    done = target
            if status in ENDED:
                return job
            time.sleep(1)


@fine_tune.command("create")
@click.argument("training_file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option("--model", required=True, help="A served base model.")
@click.option("--suffix", default=None, help="Part of the fine-tuned model's name (letters, digits, '.', '_', '-').")
@click.option("--validation-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--epochs", "n_epochs", default=None, help="A number, or 'auto' (default).")
@click.option("--batch-size", default=None, help="A number, or 'auto' (default).")
@click.option("--learning-rate-multiplier", default=None, help="A number, or 'auto' (default).")
@click.option("--seed", type=int, default=None)
@click.option("--follow", is_flag=True, help="Show the training's progress until the job ends.")
@json_option
@gateway_options
def create(training_file: Path, model: str, suffix: str | None, validation_file: Path | None, n_epochs: str | None,
           batch_size: str | None, learning_rate_multiplier: str | None, seed: int | None, follow: bool, as_json: bool,
           base_url: str | None, api_key: str | None) -> None:
    """Upload TRAINING_FILE (JSONL) and start a fine-tuning job of MODEL on it."""
    hyperparameters = {name: _number(value) for name, value in (
        ("n_epochs", n_epochs), ("batch_size", batch_size), ("learning_rate_multiplier", learning_rate_multiplier))
        if value is not None}
    with Gateway(base_url, api_key) as gateway:
        uploaded = {}
        for field, path in (("training_file", training_file), ("validation_file", validation_file)):
            if path is None:
                continue
            boundary = uuid.uuid4().hex
            with click.progressbar(length=path.stat().st_size, label=f"uploading {path.name}",
                                   file=click.get_text_stream("stderr")) as bar:
                uploaded[field] = gateway.call(
                    "POST", "/v1/files", content=_multipart({"purpose": "fine-tune"}, [path], boundary, bar),
                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})["id"]
        body: dict[str, Any] = {"model": model, **uploaded,
                                "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}}
        body.update({name: value for name, value in (("suffix", suffix), ("seed", seed)) if value is not None})
        job = gateway.call("POST", "/v1/fine_tuning/jobs", json=body)
        if follow:
            job = _follow(gateway, job["id"])
    click.echo(msgspec.json.encode(job).decode() if as_json else _line(job))
    if follow and job["status"] != "succeeded":
        raise SystemExit(1)


@fine_tune.command("list")
@json_option
@gateway_options
def list_jobs(as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """List the tenant's fine-tuning jobs, newest first."""
    with Gateway(base_url, api_key) as gateway:
        listing: dict[str, Any] = {"object": "list", "data": [], "has_more": False}
        page: dict[str, Any] = {"has_more": True, "data": []}
        while page["has_more"]:
            params = {"limit": 100, **({"after": page["data"][-1]["id"]} if page["data"] else {})}
            page = gateway.call("GET", "/v1/fine_tuning/jobs", params=params)
            listing["data"] += page["data"]
    if as_json:
        click.echo(msgspec.json.encode(listing).decode())
        return
    if not listing["data"]:
        click.echo("no fine-tuning jobs")
    for job in listing["data"]:
        click.echo(_line(job))


@fine_tune.command("show")
@click.argument("job_id")
@json_option
@gateway_options
def show(job_id: str, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """Show JOB_ID: status, hyperparameters, trained tokens, the fine-tuned model."""
    with Gateway(base_url, api_key) as gateway:
        job = gateway.call("GET", f"/v1/fine_tuning/jobs/{job_id}")
    if as_json:
        click.echo(msgspec.json.encode(job).decode())
        return
    click.echo(_line(job))
    hp = job["hyperparameters"]
    click.echo(f"  epochs {hp['n_epochs']}, batch size {hp['batch_size']}, learning rate multiplier "
               f"{hp['learning_rate_multiplier']}, LoRA r {hp['lora_r']}; trained tokens {job['trained_tokens']}")


@fine_tune.command("events")
@click.argument("job_id")
@click.option("--follow", is_flag=True, help="Show the training's progress until the job ends.")
@json_option
@gateway_options
def events(job_id: str, follow: bool, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """JOB_ID's events, oldest first (with --follow: after the job has ended)."""
    with Gateway(base_url, api_key) as gateway:
        if follow:
            _follow(gateway, job_id)
        found: list[dict[str, Any]] = []
        page: dict[str, Any] = {"has_more": True, "data": []}
        while page["has_more"]:
            params = {"limit": 100, **({"after": page["data"][-1]["id"]} if page["data"] else {})}
            page = gateway.call("GET", f"/v1/fine_tuning/jobs/{job_id}/events", params=params)
            found += page["data"]
    found.reverse()
    if as_json:
        click.echo(msgspec.json.encode({"object": "list", "data": found, "has_more": False}).decode())
        return
    for event in found:
        click.echo(f"{time.strftime('%H:%M:%S', time.gmtime(event['created_at']))}  {event['level']:<5} {event['message']}")


@fine_tune.command("cancel")
@click.argument("job_id")
@json_option
@gateway_options
def cancel(job_id: str, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """Cancel JOB_ID: training stops within seconds; the steps done are billed."""
    with Gateway(base_url, api_key) as gateway:
        job = gateway.call("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel")
    click.echo(msgspec.json.encode(job).decode() if as_json else _line(job))

