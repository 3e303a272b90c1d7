"""``/v1/files``: OpenAI's files API (upload, list, retrieve, content, delete), tenant-scoped.

An upload streams to a temporary folder as it arrives (python-multipart, gateway/adapters/operations.py),
within the route's body limit (``LORAFLEET_MAX_FILE_BYTES``, 413 beyond), then goes to the blob store
under the tenant's file quota (files/service.py). A download streams from the blob store within bounded
slots (gateway/downloads.py). Reads are the caller's files only: another tenant's file id is answered exactly like
one that never existed (404).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from litestar import Controller, Request, delete, get, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream
from lorafleet.core.errors import InvalidRequest, PayloadTooLarge
from lorafleet.files.service import UPLOAD_PURPOSES, FileDeleted, FileObject, FilePage
from lorafleet.gateway.adapters.operations import receive_multipart
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, TENANT_GUARDS, AppServices, Caller, scope
from lorafleet.gateway.downloads import Download
from lorafleet.gateway.error_specs import API_KEY, error_responses
from lorafleet.gateway.openapi import TENANT_SECURITY
from lorafleet.gateway.params import Limit
from lorafleet.gateway.services import Services

MIN_EXPIRY_SECONDS, MAX_EXPIRY_SECONDS = 3600, 30 * 24 * 3600  # OpenAI's bounds for expires_after

_UPLOAD_SCHEMA = Schema(
    type=OpenAPIType.OBJECT, required=["purpose", "file"],
    properties={
        "purpose": Schema(type=OpenAPIType.STRING, enum=list(UPLOAD_PURPOSES),
                          description="`fine-tune` (a JSONL training file) or `batch`."),
        "file": Schema(type=OpenAPIType.STRING, format="binary", description="The file."),
        "expires_after[anchor]": Schema(type=OpenAPIType.STRING, enum=["created_at"],
                                        description="Optional expiry: counted from the file's creation."),
        "expires_after[seconds]": Schema(type=OpenAPIType.INTEGER, minimum=MIN_EXPIRY_SECONDS,
                                         maximum=MAX_EXPIRY_SECONDS, description="Optional expiry, in seconds."),
    })


@dataclass
class FileUploadOperation(Operation):
    """The upload streams to disk as it arrives, so Litestar does not parse it: its schema is declared here."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(required=True, content={
            "multipart/form-data": OpenAPIMediaType(schema=_UPLOAD_SCHEMA)})


After = Annotated[str | None, QueryParameter(min_length=1, max_length=64,
                                             description="The id of the last file of the previous page.")]
PurposeFilter = Annotated[str | None, QueryParameter(max_length=32, description="Only files of this purpose.")]


async def file_stream(services: Services, tenant_id: str, file_id: str, *, filename: str | None = None) -> Download:
    """The bytes of one of the tenant's files as a response (404 for anyone else's), streamed from the blob
    store as they are read, within the gateway's and the tenant's download slots (gateway/downloads.py)."""
    stored = await services.files.get(tenant_id, file_id)
    slot = services.downloads.acquire(tenant_id)
    try:
        reader = await services.files.open(stored)
    except BaseException:
        slot.release()
        raise
    headers = {"content-length": str(stored.view.bytes)}
    if filename:
        headers["content-disposition"] = f'attachment; filename="{filename}"'
    return Download(reader, slot, stall_seconds=services.settings.download_stall_seconds, headers=headers)


def _expiry(fields: dict[str, str]) -> int | None:
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("expires_after[anchor] must be 'created_at'", param="expires_after[anchor]")
    try:
        value = int(seconds or "")
    except ValueError:
        value = -1
    if not MIN_EXPIRY_SECONDS <= value <= MAX_EXPIRY_SECONDS:
        raise InvalidRequest(f"expires_after[seconds] must be an integer from {MIN_EXPIRY_SECONDS} to "
                             f"{MAX_EXPIRY_SECONDS}", param="expires_after[seconds]")
    return value


async def receive_file(request: Request, services: Services, tenant_id: str, *,
                       purposes: tuple[str, ...] = UPLOAD_PURPOSES) -> FileObject:
    """One multipart upload (``purpose``, ``file``, optional ``expires_after``) streamed to disk and stored
    for the tenant: the API's route and the dashboard's (which takes ``fine-tune`` only) share it."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > services.settings.max_file_bytes + 64 * 1024:
        raise PayloadTooLarge(f"files are limited to {services.settings.max_file_bytes} bytes", param="file")
    await services.files.storage.check_room(tenant_id, 0, param="file")
    # A bounded number at a time per tenant and gateway, each cut when its client stops sending: uploads
    # in progress hold a temporary file of up to LORAFLEET_MAX_FILE_BYTES each.
    slot = services.uploads.acquire(tenant_id)
    workdir = Path(tempfile.mkdtemp(prefix="lorafleet-file-"))
    try:
        form = await receive_multipart(request, workdir, "the file", stall_seconds=services.settings.upload_stall_seconds)
        purpose = form.fields.get("purpose", "")
        if purpose not in purposes:
            raise InvalidRequest(f"purpose must be one of {', '.join(purposes)}", param="purpose")
        parts = [(name, path) for (field, name, _), (_, path) in zip(form.file_digests, form.files, strict=True)
                 if field == "file"]
        if len(parts) != 1:
            raise InvalidRequest("send exactly one file, in the form field 'file'", param="file")
        filename, path = parts[0]
        if os.path.getsize(path) > services.settings.max_file_bytes:
            raise PayloadTooLarge(f"files are limited to {services.settings.max_file_bytes} bytes", param="file")
        return await services.files.store(tenant_id, purpose, filename, path,
                                          expires_after_seconds=_expiry(form.fields))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        slot.release()


class FilesController(Controller):
    path = "/v1/files"
    tags = ["Files"]
    security = TENANT_SECURITY
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES

    @post("/", operation_id="createFile", status_code=200, operation_class=FileUploadOperation,
          responses=error_responses(400, 408, 409, 413, 415, 429, 503, *API_KEY),
          summary="Upload a file (multipart: purpose, file, optional expires_after) for fine-tuning or batches "
                  "(a bounded number at a time per account and per gateway: 429 or 503 with Retry-After beyond; "
                  "an upload that sends nothing for `LORAFLEET_UPLOAD_STALL_SECONDS` gets a 408).",
          opt=scope("adapters:write", audit="file.created"))
    async def create_file(self, request: Request, services: AppServices, principal: Caller) -> FileObject:
        return await receive_file(request, services, principal.tenant_id)

    @get("/", operation_id="listFiles", responses=error_responses(400, *API_KEY),
         summary="The caller's files, oldest id first (`after`: the last id of the previous page).",
         opt=scope("adapters:read"))
    async def list_files(self, services: AppServices, principal: Caller, limit: Limit = 100, after: After = None,
                         purpose: PurposeFilter = None) -> FilePage:
        return await services.files.list(principal.tenant_id, purpose=purpose, after=after, limit=limit)

    @get("/{file_id:str}", operation_id="retrieveFile", responses=error_responses(400, 404, *API_KEY),
         summary="One of the caller's files.", opt=scope("adapters:read"))
    async def retrieve_file(self, file_id: FromPath[str], services: AppServices, principal: Caller) -> FileObject:
        return (await services.files.get(principal.tenant_id, file_id)).view

    @get("/{file_id:str}/content", operation_id="downloadFile", media_type="application/octet-stream",
         responses=error_responses(400, 404, 429, 503, *API_KEY),
         summary="The bytes of one of the caller's files, streamed (a bounded number of downloads at a time per "
                 "account and per gateway: 429 or 503 with Retry-After beyond; a reader that takes nothing for "
                 "`LORAFLEET_DOWNLOAD_STALL_SECONDS` is cut).",
         opt=scope("adapters:read"))
    async def file_content(self, file_id: FromPath[str], services: AppServices, principal: Caller) -> Stream:
        return await file_stream(services, principal.tenant_id, file_id)

    @delete("/{file_id:str}", operation_id="deleteFile", status_code=200, responses=error_responses(400, 404, *API_KEY),
            summary="Delete one of the caller's files (jobs already started keep their copy).",
            opt=scope("adapters:write", audit="file.deleted"))
    async def delete_file(self, file_id: FromPath[str], services: AppServices, principal: Caller) -> FileDeleted:
        return await services.files.delete(principal.tenant_id, file_id)
