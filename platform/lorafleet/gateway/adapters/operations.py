"""What the API and the dashboard do to adapters beyond the adapter service: uploads that stream to
disk, and deletes that reach the catalog and every worker.

Stream a multipart upload to temporary files: never the whole upload in memory.

python-multipart parses the body chunk by chunk as it arrives; each file part is written to a
temporary folder; the byte cap is enforced by the route's ``request_max_body_size`` on the bytes
actually received (413 past it).
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from litestar import Request
from lorafleet.adapters.service import AdapterView
from lorafleet.core.errors import InvalidRequest, RequestTimeout, UnsupportedMediaType
from lorafleet.gateway.context import RequestContext
from lorafleet.gateway.idempotency import once
from lorafleet.gateway.services import Services
from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELD_BYTES = 4096
MAX_PARTS = 64


@dataclass
class UploadedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, Path]] = field(default_factory=list)  # (client file name, local path)
    file_digests: list[tuple[str, str, str]] = field(default_factory=list)  # (form field, file name, sha256)

    def fingerprint(self) -> dict[str, object]:
        """What an idempotent retry must repeat: the form's fields and each file's name and content —
        not the multipart framing (a client picks a new random boundary for every send)."""
        return {"fields": sorted(self.fields.items()), "files": self.file_digests}


class _Part:
    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.header_field = b""
        self.header_value = b""
        self.name = ""
        self.filename: str | None = None
        self.buffer = bytearray()
        self.sink: BinaryIO | None = None
        self.path: Path | None = None
        self.digest = hashlib.sha256()


class _FormReader:
    """python-multipart callbacks that write file parts to ``into`` and keep short fields."""

    def __init__(self, into: Path) -> None:
        self.into = into
        self.form = UploadedForm()
        self.part = _Part()
        self.parts = 0
        self.error: InvalidRequest | None = None

    def callbacks(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
            "on_part_data", "on_part_end")}

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            self.error = self.error or InvalidRequest(f"more than {MAX_PARTS} form parts")
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.part.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.part.header_value += data[start:end]

    def on_header_end(self) -> None:
        part = self.part
        part.headers[part.header_field.lower()] = part.header_value
        part.header_field, part.header_value = b"", b""

    def on_headers_finished(self) -> None:
        part = self.part
        _, disposition = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.name = disposition.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = disposition.get(b"filename")
        if raw_filename is not None:
            # Only the base name counts: a client's path never reaches our file system.
            part.filename = Path(raw_filename.decode("utf-8", "replace").replace("\\", "/")).name or "upload"
            part.path = self.into / f"{len(self.form.files)}-{part.filename}"
            part.sink = open(part.path, "wb")  # noqa: SIM115 - closed in on_part_end / close()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        if part.sink is not None:
            part.sink.write(data[start:end])
            part.digest.update(data[start:end])
            return
        part.buffer += data[start:end]
        if len(part.buffer) > MAX_FIELD_BYTES:
            self.error = self.error or InvalidRequest(f"form field {part.name!r} is too long", param=part.name or None)
            part.buffer.clear()

    def on_part_end(self) -> None:
        part = self.part
        if part.sink is not None:
            part.sink.close()
            self.form.files.append((part.filename or "upload", part.path))  # type: ignore[arg-type]
            self.form.file_digests.append((part.name, part.filename or "upload", part.digest.hexdigest()))
        elif part.name:
            self.form.fields[part.name] = part.buffer.decode("utf-8", "replace")

    def close(self) -> None:
        if self.part.sink is not None and not self.part.sink.closed:
            self.part.sink.close()


async def receive_multipart(request: Request, into: Path, what: str = "the adapter", *,
                            stall_seconds: float | None = None) -> UploadedForm:
    """The multipart body, its files streamed into ``into`` as they arrive; a client that sends nothing for
    ``stall_seconds`` gets a 408 (its partial files go with the caller's folder)."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise UnsupportedMediaType(f"send {what} as multipart/form-data", param="content-type")
    reader = _FormReader(into)
    parser = MultipartParser(options[b"boundary"], callbacks=reader.callbacks())
    chunks = aiter(request.stream())
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(chunks), stall_seconds)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise RequestTimeout(f"nothing of {what} arrived for {stall_seconds:g} s; send it again") from None
            parser.write(chunk)
            if reader.error:
                raise reader.error
        parser.finalize()
    except ValueError as exc:  # python-multipart's parse errors
        raise InvalidRequest(f"malformed multipart body: {exc}") from None
    finally:
        reader.close()
    if reader.error:
        raise reader.error
    return reader.form


PREWARM_CHOICES = ("none", "disk", "load")


async def upload_adapter(request: Request, context: RequestContext, services: Services, tenant_id: str, *, owner: str | None = None,
                         idempotency_key: str | None = None) -> AdapterView:
    """Stream a multipart adapter upload to a temporary folder and hand it to the adapter service
    (the API's POST /v1/adapters and the dashboard's upload both come through here).

    With an idempotency key, a retry of the same form (fields and files' contents, however framed) gets
    the first upload's adapter back.
    """
    workdir = Path(tempfile.mkdtemp(prefix="lorafleet-upload-"))
    try:
        form = await receive_multipart(request, workdir, stall_seconds=services.settings.upload_stall_seconds)
        name = form.fields.get("name", "").strip()
        if not name:
            raise InvalidRequest("the adapter needs a name (form field 'name')", param="name")
        prewarm = form.fields.get("prewarm", "none") or "none"
        if prewarm not in PREWARM_CHOICES:
            raise InvalidRequest(f"prewarm must be one of {', '.join(PREWARM_CHOICES)}", param="prewarm")

        async def create() -> AdapterView:
            adapter = await services.adapters.create(tenant_id, name, form.fields.get("base_model") or None, form.files,
                                                     workdir)
            services.catalog.forget_adapter(tenant_id, name)  # a "not found" cached a moment ago no longer holds
            if prewarm != "none":
                await services.adapter_calls.prewarm(adapter.id, adapter.base_model, load=prewarm == "load")
            return adapter

        if owner is None or idempotency_key is None:
            return await create()
        return await once(context, services, request.headers.get("authorization"), owner=owner, key=idempotency_key,
                          body=form.fingerprint(), action=create, result_type=AdapterView)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def delete_adapter(context: RequestContext, services: Services, tenant_id: str, adapter_id: str) -> AdapterView:
    """Delete, forget here at once, and unload from every worker (the API and the dashboard)."""
    deleted = await services.adapters.delete(tenant_id, adapter_id)
    services.catalog.forget_adapter(tenant_id, deleted.name, deleted.fine_tuned_model)
    await services.adapter_calls.unload_adapter(adapter_id)
    return deleted
