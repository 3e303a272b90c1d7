"""``/v1/models`` and ``/v1/models/{id}``: the base models served, and the caller's own adapters.

An adapter is listed by the name its tenant gave it, with ``parent`` = its base model (as vLLM
lists adapters); another tenant's adapter is never listed and its name retrieves a 404, exactly
like a name that never existed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec
from lorafleet.gateway.fleet.catalog import not_found

if TYPE_CHECKING:
    from lorafleet.gateway.services import Services


class Model(msgspec.Struct, kw_only=True):
    id: str
    created: int
    owned_by: str
    object: Literal["model"] = "model"
    max_model_len: int | None = None
    parent: str | None = None       # an adapter's base model


class ModelList(msgspec.Struct, kw_only=True):
    data: list[Model]
    object: Literal["list"] = "list"


async def list_models(services: Services, tenant_id: str) -> ModelList:
    models = [Model(id=m.name, created=m.created, owned_by="lorafleet", max_model_len=m.max_model_len)
              for m in sorted(services.catalog.all(), key=lambda m: m.name)]
    adapters = await services.adapters.list_all(tenant_id)
    models += [Model(id=a.name, created=int(a.created_at.timestamp()), owned_by=tenant_id, parent=a.base_model)
               for a in sorted(adapters, key=lambda a: a.name)]
    return ModelList(data=models)


async def retrieve_model(services: Services, tenant_id: str, name: str) -> Model:
    """One model by the name a request would use: a base model, ``adapter`` or ``base:adapter``."""
    resolved = await services.catalog.resolve(tenant_id, name)
    base = resolved.base
    if resolved.adapter_id is None:
        return Model(id=base.name, created=base.created, owned_by="lorafleet", max_model_len=base.max_model_len)
    adapter = await services.adapters.find(tenant_id, resolved.adapter_id)
    if adapter is None:
        raise not_found(name)
    return Model(id=adapter.name, created=int(adapter.created_at.timestamp()), owned_by=tenant_id,
                 parent=adapter.base_model)
