"""`lorafleet adapters …`: a tenant's adapters through the gateway's HTTP API, with the tenant's key."""

from __future__ import annotations

import contextlib
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

    @contextlib.contextmanager
    def stream(self, path: str) -> Iterator[httpx.Response]:
        """A GET whose body is read as it arrives (a download); unreachable as for :meth:`call`."""
        try:
            with self.http.stream("GET", path) as response:
                yield response
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach the gateway at {self.base_url}: {exc or type(exc).__name__}",
                              code="gateway_unavailable") from None

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


def _target(text: str) -> dict[str, int]:
    """``2`` or ``2:90`` (version, weight)."""
    version, _, weight = text.removeprefix("v").partition(":")
    try:
        return {"version": int(version), **({"weight": int(weight)} if weight else {})}
    except ValueError:
        raise click.BadParameter(f"{text!r}: write VERSION or VERSION:WEIGHT, e.g. 2 or 2:10",
                                 param_hint="'TARGETS'") from None


def _alias_line(alias: dict[str, Any]) -> str:
    targets = ", ".join(f"v{t['version']} ({t['weight']})" if len(alias["targets"]) > 1 else f"v{t['version']}"
                        for t in alias["targets"])
    return f"{alias['model']:<32} → {targets}"


@adapters.group("alias")
def alias() -> None:
    """Aliases of an adapter name (NAME@ALIAS in `model`): one version, or weighted versions."""


@alias.command("set")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.argument("targets", nargs=-1, required=True)
@json_option
@gateway_options
def alias_set(name: str, alias_name: str, targets: tuple[str, ...], as_json: bool, base_url: str | None,
              api_key: str | None) -> None:
    """Point NAME@ALIAS at TARGETS: `2` (all to version 2) or `1:90 2:10` (a canary). Atomic."""
    body = {"versions": [_target(text) for text in targets]}
    with Gateway(base_url, api_key) as gateway:
        moved = gateway.call("PUT", f"/v1/adapters/{name}/aliases/{alias_name}", json=body)
    click.echo(msgspec.json.encode(moved).decode() if as_json else _alias_line(moved))


@alias.command("list")
@click.argument("name")
@json_option
@gateway_options
def alias_list(name: str, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """NAME's aliases and where each sends requests."""
    with Gateway(base_url, api_key) as gateway:
        listing = gateway.call("GET", f"/v1/adapters/{name}/aliases")
    if as_json:
        click.echo(msgspec.json.encode(listing).decode())
        return
    if not listing["data"]:
        click.echo("no aliases")
    for one in listing["data"]:
        click.echo(_alias_line(one))


@alias.command("rollback")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@json_option
@gateway_options
def alias_rollback(name: str, alias_name: str, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """Put NAME@ALIAS back where it was before its latest move (one step; again undoes it)."""
    with Gateway(base_url, api_key) as gateway:
        # One key per invocation: a retry inside this command cannot roll back twice.
        moved = gateway.call("POST", f"/v1/adapters/{name}/aliases/{alias_name}/rollback",
                             headers={"Idempotency-Key": str(uuid.uuid4())})
    click.echo(msgspec.json.encode(moved).decode() if as_json else f"rolled back: {_alias_line(moved)}")


@alias.command("delete")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@json_option
@gateway_options
def alias_delete(name: str, alias_name: str, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """Delete NAME@ALIAS (its history stays, so a rollback brings it back)."""
    with Gateway(base_url, api_key) as gateway:
        deleted = gateway.call("DELETE", f"/v1/adapters/{name}/aliases/{alias_name}")
    click.echo(msgspec.json.encode(deleted).decode() if as_json else f"deleted {deleted['model']}")


@adapters.command("download")
@click.argument("reference")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="Where to write the tar (default: <name>-v<version>.tar here).")
@json_option
@gateway_options
def download(reference: str, output: Path | None, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    """Download REFERENCE (adp_… id, NAME@v<n>, NAME or ft:…) as a PEFT-loadable tar, checking its sha256."""
    import hashlib
    import re

    with Gateway(base_url, api_key) as gateway, gateway.stream(f"/v1/adapters/{reference}/content") as answer:
        if answer.status_code >= 400:
            answer.read()
            gateway.call("GET", f"/v1/adapters/{reference}/content")  # raises the API's envelope
        found = re.search(r'filename="([^"/\\]+)"', answer.headers.get("content-disposition", ""))
        target = output or Path(found.group(1) if found else "adapter.tar")
        digest = hashlib.sha256()
        partial = target.with_name(target.name + ".part")
        with open(partial, "wb") as sink:
            for block in answer.iter_bytes(CHUNK):
                digest.update(block)
                sink.write(block)
    expected = answer.headers.get("x-lorafleet-sha256")
    if expected != digest.hexdigest():
        partial.unlink(missing_ok=True)
        raise CliError(f"the download's sha256 {digest.hexdigest()} is not the announced {expected}; try again",
                       error_type="server_error", code="download_corrupt")
    partial.replace(target)
    click.echo(msgspec.json.encode({"path": str(target), "sha256": expected}).decode() if as_json
               else f"{target}  sha256 {expected}")
