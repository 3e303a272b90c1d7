"""`lorafleet adapters …`: a tenant's adapters through the gateway's HTTP API, with the tenant's key."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import click
import httpx
import msgspec
from lorafleet.cli.runtime import RuntimeFiles
from lorafleet.core.settings import get_settings

CHUNK = 256 * 1024


def _demo_env() -> dict[str, str]:
    path = RuntimeFiles(get_settings().data_path).demo_env
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def _client(base_url: str | None, api_key: str | None) -> httpx.Client:
    demo = _demo_env()
    base_url = base_url or os.environ.get("LORAFLEET_BASE_URL") or demo.get("LORAFLEET_BASE_URL")
    api_key = api_key or os.environ.get("LORAFLEET_API_KEY") or demo.get("LORAFLEET_API_KEY")
    if not base_url or not api_key:
        raise click.ClickException("Set LORAFLEET_BASE_URL and LORAFLEET_API_KEY (or pass --base-url/--api-key).")
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=600)


def _check(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        raise click.ClickException(f"HTTP {response.status_code}: {response.text[:500]}") from None
    if response.status_code >= 400:
        error = body.get("error", {})
        where = f" ({error['param']})" if error.get("param") else ""
        raise click.ClickException(f"{error.get('message', response.text)}{where}")
    return body


def _multipart(fields: dict[str, str], files: list[Path], boundary: str, bar) -> Iterator[bytes]:
    """A multipart/form-data body produced chunk by chunk, advancing ``bar`` as file bytes go out."""
    for name, value in fields.items():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").encode()
    for path in files:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        with open(path, "rb") as handle:
            while block := handle.read(CHUNK):
                bar.update(len(block))
                yield block
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


connection_options = [
    click.option("--base-url", default=None, help="Gateway URL (default: LORAFLEET_BASE_URL or .lorafleet/demo.env)."),
    click.option("--api-key", default=None, help="Tenant API key (default: LORAFLEET_API_KEY or .lorafleet/demo.env)."),
]


def with_connection(command):
    for option in reversed(connection_options):
        command = option(command)
    return command


@click.group()
def adapters() -> None:
    """A tenant's LoRA adapters (through the gateway, with the tenant's API key)."""


@adapters.command("upload")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--name", required=True, help="The name to call it by in `model`.")
@click.option("--base-model", default=None, help="Base model (default: the only one).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document to stdout.")
@with_connection
def upload(path: Path, name: str, base_model: str | None, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """Upload PATH: a PEFT adapter folder, or a .tar.gz/.zip of one."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name != "README.md") if path.is_dir() else [path]
    fields = {"name": name, **({"base_model": base_model} if base_model else {})}
    boundary = uuid.uuid4().hex
    total = sum(p.stat().st_size for p in files)
    with _client(base_url, api_key) as http, click.progressbar(length=total, label="uploading", file=click.get_text_stream("stderr")) as bar:
        response = http.post("/v1/adapters", content=_multipart(fields, files, boundary, bar),
                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    adapter = _check(response)
    if as_json:
        click.echo(msgspec.json.encode(adapter).decode())
    else:
        click.echo(f"uploaded {adapter['id']} as {adapter['name']!r} (rank {adapter['rank']}, {adapter['size_bytes']} bytes)")


@adapters.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document to stdout.")
@with_connection
def list_adapters(as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """List the tenant's adapters."""
    with _client(base_url, api_key) as http:
        listing = {"object": "list", "data": [], "has_more": False}
        page = {"has_more": True, "data": []}
        while page["has_more"]:  # follow the cursor through every page
            params = {"limit": 100, **({"starting_after": page["data"][-1]["id"]} if page["data"] else {})}
            page = _check(http.get("/v1/adapters", params=params))
            listing["data"] += page["data"]
    if as_json:
        click.echo(msgspec.json.encode(listing).decode())
        return
    for adapter in listing["data"]:
        click.echo(f"{adapter['id']}  {adapter['name']:<24} rank {adapter['rank']:<3} {adapter['size_bytes']:>10} B  {adapter['base_model']}")


@adapters.command("delete")
@click.argument("adapter_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document to stdout.")
@with_connection
def delete(adapter_id: str, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """Delete ADAPTER_ID: unloaded everywhere, never served again."""
    with _client(base_url, api_key) as http:
        deleted = _check(http.delete(f"/v1/adapters/{adapter_id}"))
    click.echo(msgspec.json.encode(deleted).decode() if as_json else f"deleted {deleted['id']}")
