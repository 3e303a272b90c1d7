"""`lorafleet batches …`: a tenant's batches through the gateway's HTTP API, with the tenant's key.

`create` uploads the input file (`/v1/files`, purpose batch) and starts the batch; `--follow` (on `create`
and `show`) shows a progress bar over its lines until it ends; `download` writes its output and error files.
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

ENDED = ("completed", "failed", "expired", "cancelled")
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")


@click.group("batches")
def batches() -> None:
    """A tenant's batches (through the gateway, with the tenant's API key)."""


def _line(batch: dict[str, Any]) -> str:
    counts = batch["request_counts"]
    return (f"{batch['id']}  {batch['status']:<11} {batch['endpoint']:<21} "
            f"{counts['completed']}/{counts['total']} done, {counts['failed']} failed")


def _follow(gateway: Gateway, batch_id: str) -> dict[str, Any]:
    """Poll until the batch ends, a progress bar over its lines on stderr; the final batch."""
    status, done = "", 0
    with click.progressbar(length=1, label="lines", file=click.get_text_stream("stderr"), show_eta=False) as bar:
        while True:
            batch = gateway.call("GET", f"/v1/batches/{batch_id}")
            if batch["status"] != status:
                status = batch["status"]
                click.echo(f"\n{batch_id}: {status}", err=True)
            counts = batch["request_counts"]
            bar.length = max(1, counts["total"])
            finished = counts["completed"] + counts["failed"]
            if finished > done:
                bar.update(finished - done)
                done = finished
            if status in ENDED:
                return batch
            time.sleep(1)


def _emit(batch: dict[str, Any], as_json: bool) -> None:
    click.echo(msgspec.json.encode(batch).decode() if as_json else _line(batch))
    if not as_json and batch.get("errors"):
        for error in batch["errors"]["data"]:
            click.echo(f"  {error['code']}: {error['message']}")


@batches.command("create")
@click.argument("input_file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option("--endpoint", type=click.Choice(ENDPOINTS), default="/v1/chat/completions", show_default=True,
              help="The API every line calls.")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="A metadata pair (repeatable).")
@click.option("--follow", is_flag=True, help="Show the batch's progress until it ends.")
@json_option
@gateway_options
def create(input_file: Path, endpoint: str, metadata: tuple[str, ...], follow: bool, as_json: bool,
           base_url: str | None, api_key: str | None) -> None:
    """Upload INPUT_FILE (JSONL: one request per line) and run it as a batch within 24 hours."""
    pairs = {}
    for pair in metadata:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--metadata")
        pairs[key] = value
    with Gateway(base_url, api_key) as gateway:
        boundary = uuid.uuid4().hex
        with click.progressbar(length=input_file.stat().st_size, label=f"uploading {input_file.name}",
                               file=click.get_text_stream("stderr")) as bar:
            file_id = gateway.call("POST", "/v1/files", content=_multipart({"purpose": "batch"}, [input_file], boundary,
                                                                            bar),
                                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})["id"]
        body: dict[str, Any] = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}
        if pairs:
            body["metadata"] = pairs
        batch = gateway.call("POST", "/v1/batches", json=body)
        if follow:
            batch = _follow(gateway, batch["id"])
    _emit(batch, as_json)
    if follow and batch["status"] != "completed":
        raise SystemExit(1)


@batches.command("list")
@json_option
@gateway_options
def list_batches(as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """List the tenant's batches, newest first."""
    with Gateway(base_url, api_key) as gateway:
        listing: dict[str, Any] = {"object": "list", "data": [], "has_more": False}
        page: dict[str, Any] = {"has_more": True, "data": []}
        while page["has_more"]:
            params = {"limit": 100, **({"after": page["data"][-1]["id"]} if page["data"] else {})}
            page = gateway.call("GET", "/v1/batches", params=params)
            listing["data"] += page["data"]
    if as_json:
        click.echo(msgspec.json.encode(listing).decode())
        return
    if not listing["data"]:
        click.echo("no batches")
    for batch in listing["data"]:
        click.echo(_line(batch))


@batches.command("show")
@click.argument("batch_id")
@click.option("--follow", is_flag=True, help="Show the batch's progress until it ends.")
@json_option
@gateway_options
def show(batch_id: str, follow: bool, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """Show BATCH_ID: status, counts, usage, its files (and any validation errors)."""
    with Gateway(base_url, api_key) as gateway:
        batch = _follow(gateway, batch_id) if follow else gateway.call("GET", f"/v1/batches/{batch_id}")
    _emit(batch, as_json)
    if not as_json:
        usage = batch["usage"]
        click.echo(f"  tokens: {usage['input_tokens']} in ({usage['input_tokens_details']['cached_tokens']} cached), "
                   f"{usage['output_tokens']} out; output file {batch['output_file_id'] or '-'}, "
                   f"error file {batch['error_file_id'] or '-'}")


@batches.command("cancel")
@click.argument("batch_id")
@json_option
@gateway_options
def cancel(batch_id: str, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """Cancel BATCH_ID: no new line starts, running lines finish; only what ran is billed."""
    with Gateway(base_url, api_key) as gateway:
        batch = gateway.call("POST", f"/v1/batches/{batch_id}/cancel")
    _emit(batch, as_json)


@batches.command("download")
@click.argument("batch_id")
@click.option("--out", "folder", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder to write BATCH_ID.output.jsonl and BATCH_ID.errors.jsonl into.")
@json_option
@gateway_options
def download(batch_id: str, folder: Path, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """Write BATCH_ID's output and error files (those it has) into --out."""
    written = {}
    with Gateway(base_url, api_key) as gateway:
        batch = gateway.call("GET", f"/v1/batches/{batch_id}")
        folder.mkdir(parents=True, exist_ok=True)
        for field, name in (("output_file_id", "output"), ("error_file_id", "errors")):
            if batch.get(field):
                path = folder / f"{batch_id}.{name}.jsonl"
                path.write_bytes(gateway.content(f"/v1/files/{batch[field]}/content"))
                written[name] = str(path)
    if as_json:
        click.echo(msgspec.json.encode({"batch_id": batch_id, "status": batch["status"], "files": written}).decode())
        return
    if not written:
        click.echo(f"{batch_id} is {batch['status']}: no files yet")
    for path in written.values():
        click.echo(path)
