"""Releasing adapter versions: aliases (``name@prod``, weighted canaries, rollback) and the weights out.

- ``/v1/adapters/{adapter_name}/aliases[/{alias}]``: list, read (with its history), set (``PUT``, one
  statement: requests resolve it before or after, never half-way), delete, and ``…/rollback``.
- ``/v1/adapters/{adapter_id}/content``: a version as a PEFT-loadable tar, streamed within the download
  slots (gateway/downloads.py); ``adapter_id`` is an ``adp_…`` id, ``name@v<n>``, ``name`` (its latest
  version) or an ``ft:…`` name. The archive's sha256 is in ``X-LoraFleet-Sha256``.
"""

from __future__ import annotations

import asyncio

import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.params import FromPath, JSONBody
from lorafleet.adapters.aliases import VERSION, AliasSet, AliasView
from lorafleet.adapters.service import AdapterService
from lorafleet.core.errors import InvalidRequest, ModelNotFound, NotFound
from lorafleet.gateway.body import StrictBody
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, TENANT_GUARDS, AppServices, Caller, Context, scope
from lorafleet.gateway.downloads import Download
from lorafleet.gateway.error_specs import API_KEY, error_responses
from lorafleet.gateway.idempotency import IdempotencyKey, once
from lorafleet.gateway.openapi import TENANT_SECURITY
from lorafleet.gateway.services import Services

ALIAS_BODY_BYTES = 16 * 1024  # ten versions and weights fit in well under 1 KiB
SHA256_HEADER = "X-LoraFleet-Sha256"
WEIGHTS_SHA256_HEADER = "X-LoraFleet-Weights-Sha256"


class AliasList(msgspec.Struct, kw_only=True):
    data: list[AliasView]
    object: str = "list"


async def adapter_id_of(services: Services, tenant_id: str, reference: str) -> str:
    """An ``adp_`` id, or a model name that names exactly one version (an alias may name several: 400)."""
    if reference.startswith("adp_"):
        return reference
    selector = "" if reference.startswith("ft:") else reference.rpartition(":")[2].partition("@")[2]
    if selector and not VERSION.match(selector):
        raise InvalidRequest(f"{reference[:200]!r} is an alias, which may point at several versions; name one "
                             "version (name@v<n>) or its id", param="adapter_id", code="alias_not_a_version")
    try:
        resolved = await services.catalog.resolve(tenant_id, reference)
    except ModelNotFound:
        resolved = None
    if resolved is None or resolved.adapter_id is None:
        raise NotFound(f"no adapter {reference[:200]!r}", param="adapter_id")
    return resolved.adapter_id


async def adapter_download(services: Services, adapters: AdapterService, tenant_id: str, adapter_id: str) -> Download:
    """The version's archive, streamed within this gateway's and this tenant's download slots."""
    archive = await adapters.archive(tenant_id, adapter_id)  # 404 before a slot is taken
    slot = services.downloads.acquire(tenant_id)
    try:
        digest = await asyncio.to_thread(archive.digest)  # a first pass: the hash must precede the body
        reader = await asyncio.to_thread(archive.reader)
    except BaseException:
        slot.release()
        raise
    headers = {"Content-Disposition": f'attachment; filename="{archive.folder}.tar"', SHA256_HEADER: digest,
               WEIGHTS_SHA256_HEADER: archive.weights_sha256, "X-LoraFleet-Archive-Bytes": str(archive.size)}
    return Download(reader, slot, stall_seconds=services.settings.download_stall_seconds, headers=headers)


class AdapterReleasesController(Controller):
    path = "/v1/adapters"
    tags = ["Adapters"]
    security = TENANT_SECURITY
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES
    request_max_body_size = ALIAS_BODY_BYTES

    @get("/{adapter_id:str}/content", operation_id="downloadAdapter", media_type="application/octet-stream",
         responses=error_responses(400, 404, 429, 503, *API_KEY),
         summary="One adapter version as a PEFT-loadable tar (adapter_config.json + adapter_model.safetensors); "
                 "its sha256 in X-LoraFleet-Sha256.", opt=scope("adapters:read"))
    async def download_adapter(self, adapter_id: FromPath[str], services: AppServices, principal: Caller) -> Download:
        found = await adapter_id_of(services, principal.tenant_id, adapter_id)
        try:
            return await adapter_download(services, services.adapters, principal.tenant_id, found)
        except NotFound:  # the name's own spelling in the message, as for one that never existed
            raise NotFound(f"no adapter {adapter_id[:200]!r}", param="adapter_id") from None

    @get("/{adapter_name:str}/aliases", operation_id="listAdapterAliases", responses=error_responses(400, 404, *API_KEY),
         summary="An adapter name's aliases and where each sends requests.", opt=scope("adapters:read"))
    async def list_aliases(self, adapter_name: FromPath[str], services: AppServices, principal: Caller) -> AliasList:
        return AliasList(data=await services.aliases.list(principal.tenant_id, adapter_name))

    @get("/{adapter_name:str}/aliases/{alias:str}", operation_id="getAdapterAlias",
         responses=error_responses(400, 404, *API_KEY), summary="One alias, with its recent moves.",
         opt=scope("adapters:read"))
    async def get_alias(self, adapter_name: FromPath[str], alias: FromPath[str], services: AppServices,
                        principal: Caller) -> AliasView:
        return await services.aliases.get(principal.tenant_id, adapter_name, alias)

    @put("/{adapter_name:str}/aliases/{alias:str}", operation_id="setAdapterAlias", dto=StrictBody[AliasSet],
         return_dto=None, responses=error_responses(400, 404, 413, *API_KEY),
         summary="Point an alias at one version or weighted versions (atomic; requests in flight keep theirs).",
         opt=scope("adapters:write", audit="adapter_alias.updated"))
    async def set_alias(self, adapter_name: FromPath[str], alias: FromPath[str], data: JSONBody[AliasSet],
                        services: AppServices, principal: Caller) -> AliasView:
        view = await services.aliases.set(principal.tenant_id, adapter_name, alias, data, key_id=principal.key_id)
        services.catalog.forget_adapter(principal.tenant_id, adapter_name)
        return view

    @delete("/{adapter_name:str}/aliases/{alias:str}", operation_id="deleteAdapterAlias", status_code=200,
            responses=error_responses(400, 404, *API_KEY), summary="Delete an alias (its history stays).",
            opt=scope("adapters:write", audit="adapter_alias.deleted"))
    async def delete_alias(self, adapter_name: FromPath[str], alias: FromPath[str], services: AppServices,
                           principal: Caller) -> AliasView:
        view = await services.aliases.delete(principal.tenant_id, adapter_name, alias, key_id=principal.key_id)
        services.catalog.forget_adapter(principal.tenant_id, adapter_name)
        return view

    @post("/{adapter_name:str}/aliases/{alias:str}/rollback", operation_id="rollbackAdapterAlias", status_code=200,
          responses=error_responses(400, 404, *API_KEY),
          summary="Put the alias back where it was before its latest move (a second rollback undoes the first).",
          opt=scope("adapters:write", audit="adapter_alias.rolled_back"))
    async def rollback_alias(self, request: Request, adapter_name: FromPath[str], alias: FromPath[str],
                             context: Context, services: AppServices, principal: Caller,
                             idempotency_key: IdempotencyKey = None) -> AliasView:
        async def roll() -> AliasView:
            view = await services.aliases.rollback(principal.tenant_id, adapter_name, alias, key_id=principal.key_id)
            services.catalog.forget_adapter(principal.tenant_id, adapter_name)
            return view

        # A retried rollback must not roll back twice (that would undo it): with a key, it runs once.
        return await once(context, services, request.headers.get("authorization"), owner=principal.key_id,
                          key=idempotency_key, body={"adapter": adapter_name, "alias": alias}, action=roll,
                          result_type=AliasView)

