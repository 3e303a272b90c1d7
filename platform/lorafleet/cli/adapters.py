"""`lorafleet adapters …`: a tenant's adapters through the gateway's HTTP API, with the tenant's key."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import msgspec
from lorafleet.cli.common import json_option, load_cli_settings, read_demo_env
from lorafleet.cli.errors import CliError, NotConfigured, Unreachable
from lorafleet.cli.params import ADAPTER_ID

CHUNK = 256 * 1024


class Gateway:
    """The gateway's tenant API with one key; every failure becomes a CliError with the API's own envelope."""

    def __init__(self, base_url: str | None, api_key: str | None) -> None:
        demo = read_demo_env(load_cli_settings())
        base_url = base_url or os.environ.get("LORAFLEET_BASE_URL") or demo.get("LORAFLEET_BASE_URL")
        api_key = api_key or os.environ.get("LORAFLEET_API_KEY") or demo.get("LORAFLEET_API_KEY")
        if not base_url:
            raise NotConfigured("Set LORAFLEET_BASE_URL (or pass --base-url, or run `lorafleet up`).", param="--base-url")
        if not api_key:
            raise NotConfigured("Set LORAFLEET_API_KEY (or pass --api-key, or run `lorafleet up`).", param="--api-key")
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=600)

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> dict:
        response = self._request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            if not isinstance(error, dict):  # not the gateway's envelope: a proxy or something else answered
                raise CliError(f"HTTP {response.status_code} from {self.base_url}: {response.text[:300]}",
                               error_type="server_error", code="unexpected_response")
            raise CliError(str(error.get("message") or response.reason_phrase), error_type=str(error.get("type") or
                           "invalid_request_error"), code=error.get("code"), param=error.get("param"))
        return body

    def content(self, path: str) -> bytes:
        """A GET that answers bytes (a file's content); an error is the API's envelope, as for :meth:`call`."""
        response = self._request("GET", path)
        if response.status_code >= 400:
            self.call("GET", path)  # raises the envelope's error (a GET that failed fails again alike)
        return response.content

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:  # refused, unknown host, timed out, connection dropped
            raise Unreachable(f"cannot reach the gateway at {self.base_url}: {exc or type(exc).__name__}",
                              code="gateway_unavailable") from None


def _multipart(fields: dict[str, str], files: list[Path], boundary: str, bar: Any) -> Iterator[bytes]:
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


def gateway_options(command):
    for option in reversed(connection_options):
        command = option(command)
    return command


@click.group()
def adapters() -> None:
    """A tenant's LoRA adapters (through the gateway, with the tenant's API key)."""


@adapters.command("upload")
@click.argument("path", type=click.Path(exists=True, readable=True, path_type=Path))
@click.option("--name", required=True, help="The name to call it by in `model`.")
@click.option("--base-model", default=None, help="Base model (default: the only one).")
@json_option
@gateway_options
def upload(path: Path, name: str, base_model: str | None, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """Upload PATH: a PEFT adapter folder, or a .tar.gz/.zip of one."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name != "README.md") if path.is_dir() else [path]
    if not files:
        raise click.BadParameter(f"{str(path)!r} holds no files", param_hint="'PATH'")
    fields = {"name": name, **({"base_model": base_model} if base_model else {})}
    boundary = uuid.uuid4().hex
    total = sum(p.stat().st_size for p in files)
    with Gateway(base_url, api_key) as gateway, click.progressbar(length=total, label="uploading",
                                                                  file=click.get_text_stream("stderr")) as bar:
        adapter = gateway.call("POST", "/v1/adapters", content=_multipart(fields, files, boundary, bar),
                               headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    if as_json:
        click.echo(msgspec.json.encode(adapter).decode())
    else:
        click.echo(f"uploaded {adapter['id']} as {adapter['name']!r} (rank {adapter['rank']}, {adapter['size_bytes']} bytes)")


@adapters.command("list")
@json_option
@gateway_options
def list_adapters(as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """List the tenant's adapters."""
    with Gateway(base_url, api_key) as gateway:
        listing: dict[str, Any] = {"object": "list", "data": [], "has_more": False}
        page: dict[str, Any] = {"has_more": True, "data": []}
        while page["has_more"]:  # follow the cursor through every page
            params = {"limit": 100, **({"starting_after": page["data"][-1]["id"]} if page["data"] else {})}
            page = gateway.call("GET", "/v1/adapters", params=params)
            listing["data"] += page["data"]
    if as_json:
        click.echo(msgspec.json.encode(listing).decode())
        return
    if not listing["data"]:
        click.echo("no adapters")
    for adapter in listing["data"]:
        click.echo(f"{adapter['id']}  {adapter['name']:<24} rank {adapter['rank']:<3} {adapter['size_bytes']:>10} B  {adapter['base_model']}")


@adapters.command("delete")
@click.argument("adapter_id", type=ADAPTER_ID)
@json_option
@gateway_options
def delete(adapter_id: str, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """Delete ADAPTER_ID: unloaded everywhere, never served again."""
    with Gateway(base_url, api_key) as gateway:
        deleted = gateway.call("DELETE", f"/v1/adapters/{adapter_id}")
    click.echo(msgspec.json.encode(deleted).decode() if as_json else f"deleted {deleted['id']}")
