from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.di import Provide
from litestar.params import Parameter

from lorafleet.adapters.archive import extract, is_archive
from lorafleet.adapters.service import AdapterView
from lorafleet.adapters.validation import AdapterInvalid
from lorafleet.core.errors import InvalidRequest
from lorafleet.gateway.adapters.upload import receive_multipart
from lorafleet.gateway.auth import Principal
from lorafleet.gateway.dependencies import provide_principal, provide_services
from lorafleet.gateway.services import Services


class AdaptersController(Controller):
    path = "/v1/adapters"
    tags = ["Adapters"]
    dependencies = {"principal": Provide(provide_principal), "services": Provide(provide_services)}

    @post("/", operation_id="createAdapter", status_code=201,
          summary="Upload a PEFT LoRA adapter (multipart: name, optional base_model, files or one archive).")
    async def create_adapter(self, request: Request, principal: Principal, services: Services) -> AdapterView:
        principal.require("adapters:write")
        return await create_from_upload(request, principal.tenant_id, services)

    @get("/", operation_id="listAdapters", summary="The caller's adapters, oldest id first.")
    async def list_adapters(
        self, principal: Principal, services: Services,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 100, starting_after: str | None = None,
    ) -> dict[str, Any]:
        principal.require("adapters:read")
        adapters, has_more = await services.adapters.list(principal.tenant_id, after=starting_after, limit=limit)
        return {"object": "list", "data": adapters, "has_more": has_more}

    @get("/{adapter_id:str}", operation_id="getAdapter", summary="One of the caller's adapters.")
    async def get_adapter(self, adapter_id: str, principal: Principal, services: Services) -> AdapterView:
        principal.require("adapters:read")
        return await services.adapters.get(principal.tenant_id, adapter_id)

    @delete("/{adapter_id:str}", operation_id="deleteAdapter", status_code=200,
            summary="Delete an adapter: unloaded from every worker, never served again.")
    async def delete_adapter(self, adapter_id: str, principal: Principal, services: Services) -> AdapterView:
        principal.require("adapters:write")
        deleted = await services.adapters.delete(principal.tenant_id, adapter_id)
        await services.registry.unload_adapter(adapter_id)
        return deleted


async def create_from_upload(request: Request, tenant_id: str, services: Services) -> AdapterView:
    """Stream a multipart upload to disk, validate it and store the adapter (API and dashboard)."""
    settings = services.settings
    workdir = Path(tempfile.mkdtemp(prefix="lorafleet-upload-"))
    try:
        form = await receive_multipart(request, workdir)
        files = await asyncio.to_thread(_adapter_files, form.files, workdir, settings.max_adapter_files,
                                        settings.max_upload_bytes)
        name = form.fields.get("name", "").strip()
        if not name:
            raise InvalidRequest("the adapter needs a name (form field 'name')", param="name")
        return await services.adapters.create(tenant_id, name, form.fields.get("base_model") or None, files)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _adapter_files(uploaded: list[tuple[str, Path]], workdir: Path, max_files: int, max_bytes: int) -> dict[str, Path]:
    """The adapter's files by name: the parts themselves, or the contents of one archive part."""
    if not uploaded:
        raise AdapterInvalid("no files: send adapter_config.json and adapter_model.safetensors, or one archive",
                             param="file")
    archives = [(name, path) for name, path in uploaded if is_archive(name)]
    if archives:
        if len(uploaded) != 1:
            raise AdapterInvalid("send one archive, or the files themselves, not both", param="file")
        name, path = archives[0]
        target = workdir / "extracted"
        target.mkdir()
        return extract(path, name, target, max_files=max_files, max_bytes=max_bytes)
    files: dict[str, Path] = {}
    for name, path in uploaded:
        if name in files:
            raise AdapterInvalid(f"{name} was sent twice", param=name)
        files[name] = path
    return files
