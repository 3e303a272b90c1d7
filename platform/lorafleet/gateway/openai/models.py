"""``/v1/models`` and ``/v1/models/{id}``: the base models served, and the caller's own adapters.

An adapter is listed by the name its tenant gave it (what the bare name resolves to), each of its
versions as ``name@v<n>`` and each alias as ``name@<alias>``, with ``parent`` = its base model (as vLLM
lists adapters); another tenant's adapter is never listed and its name retrieves a 404, exactly
like a name that never existed. A generative model (and every adapter) shows ``default_max_tokens``:
the output cap a chat or Responses request gets when it sets none (openai/output_cap.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec
from lorafleet.adapters.aliases import VERSION
from lorafleet.adapters.service import AdapterView
from lorafleet.core.errors import InvalidRequest, LoraFleetError
from lorafleet.gateway.fleet.catalog import BaseModel, not_found
from lorafleet.gateway.openai.output_cap import default_max_tokens

if TYPE_CHECKING:
    from lorafleet.gateway.services import Services


class Model(msgspec.Struct, kw_only=True):
    id: str
    created: int
    owned_by: str
    object: Literal["model"] = "model"
    max_model_len: int | None = None
    parent: str | None = None       # an adapter's base model
    default_max_tokens: int | None = None  # the output cap of a request that sets none (chat, Responses)


class ModelList(msgspec.Struct, kw_only=True):
    data: list[Model]
    object: Literal["list"] = "list"


def _output_cap(services: Services, base: BaseModel | None) -> int | None:
    if base is None or base.task != "generate":
        return None
    return default_max_tokens(services.settings.default_max_output_tokens, base.max_model_len)


def _base_of(services: Services, name: str) -> BaseModel | None:
    try:
        return services.catalog.base(name)
    except LoraFleetError:
        return None


async def list_models(services: Services, tenant_id: str) -> ModelList:
    models = [Model(id=m.name, created=m.created, owned_by="lorafleet", max_model_len=m.max_model_len,
                    default_max_tokens=_output_cap(services, m))
              for m in sorted(services.catalog.all(), key=lambda m: m.name)]
    adapters = await services.adapters.list_all(tenant_id)
    latest: dict[str, AdapterView] = {}
    versions: list[tuple[str, AdapterView]] = []
    for a in sorted(adapters, key=lambda a: (a.name, a.version)):
        if a.fine_tuned_model:
            versions.append((a.fine_tuned_model, a))
            continue
        latest[a.name] = a
        versions.append((f"{a.name}@v{a.version}", a))
    listed = [(name, a) for name, a in latest.items()] + versions
    for alias in await services.aliases.list_all(tenant_id):
        target = next((a for a in adapters if a.id == alias.targets[0].adapter_id), None) if alias.targets else None
        if target is not None:
            listed.append((alias.model, target))
    models += [Model(id=name, created=int(a.created_at.timestamp()), owned_by=tenant_id, parent=a.base_model,
                     default_max_tokens=_output_cap(services, _base_of(services, a.base_model)))
               for name, a in sorted(listed, key=lambda pair: pair[0])]
    return ModelList(data=models)


async def retrieve_model(services: Services, tenant_id: str, name: str) -> Model:
    """One model by the name a request would use: a base model, ``adapter`` or ``base:adapter``."""
    resolved = await services.catalog.resolve(tenant_id, name)
    base = resolved.base
    if resolved.adapter_id is None:
        return Model(id=base.name, created=base.created, owned_by="lorafleet", max_model_len=base.max_model_len,
                     default_max_tokens=_output_cap(services, base))
    adapter = await services.adapters.find(tenant_id, resolved.adapter_id)
    if adapter is None:
        raise not_found(name)
    selector = name.rpartition(":")[2].partition("@")[2]  # name@v2 and name@prod are listed as such
    shown = adapter.fine_tuned_model or (f"{adapter.name}@{selector}" if selector else adapter.name)
    return Model(id=shown, created=int(adapter.created_at.timestamp()), owned_by=tenant_id,
                 parent=adapter.base_model, default_max_tokens=_output_cap(services, base))


class DeletedModel(msgspec.Struct, kw_only=True):
    id: str
    deleted: bool
    object: Literal["model"] = "model"


async def delete_model(context, services: Services, tenant_id: str, name: str) -> DeletedModel:
    """``DELETE /v1/models/{id}`` (the SDK's ``models.delete``): one of the caller's adapters — a
    fine-tuned model by its ``ft:…`` name, or an uploaded adapter by its name. Base models are shared
    and cannot be deleted (404, as for a name the caller cannot reach: it owns no such model)."""
    from lorafleet.gateway.adapters.operations import delete_adapter

    selector = "" if name.startswith("ft:") else name.rpartition(":")[2].partition("@")[2]
    if selector and not VERSION.match(selector):  # an alias may point at several versions: which one?
        raise InvalidRequest(f"{name[:300]!r} is an alias: delete a version (name@v<n>), or the alias with "
                             "DELETE /v1/adapters/{name}/aliases/{alias}", param="model", code="alias_not_deletable")
    resolved = await services.catalog.resolve(tenant_id, name)
    if resolved.adapter_id is None:
        raise not_found(name)
    await delete_adapter(context, services, tenant_id, resolved.adapter_id)
    return DeletedModel(id=name, deleted=True)
