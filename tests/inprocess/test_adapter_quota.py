"""Per-tenant adapter quotas: a count and a byte total, checked in the insert's transaction."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from lorafleet.adapters.blobstore import LocalBlobStore
from lorafleet.adapters.service import AdapterQuota, AdapterService
from lorafleet.core import ids
from lorafleet.core.errors import Conflict
from lorafleet.db import queries

from tests.adapter_factory import TINY, lora_config, write_adapter

BASE = "quota-tiny"  # a base model with a shape to validate against (the stub model has none)


def _parts(folder: Path) -> list[tuple[str, Path]]:
    return [(path.name, path) for path in sorted(folder.iterdir())]


@pytest.fixture
async def base(db) -> str:
    await db.execute(queries.upsert_base_model, ids.base_model_id(), BASE, 2048, msgspec.to_builtins(TINY), 16,
                     "generate")
    return BASE


async def _create(service: AdapterService, tenant_id: str, name: str, tmp_path: Path, seed: int):
    workdir = tmp_path / f"{name}-{seed}"  # the uploaded parts live in the upload's work folder, as in the API
    folder = write_adapter(workdir / "parts", seed=seed, config=lora_config(8, ["q_proj", "v_proj"], base=BASE))
    return await service.create(tenant_id, name, BASE, _parts(folder), workdir)


async def test_a_tenant_at_its_adapter_count_is_refused_until_it_deletes_one(base, db, tenant, other_tenant, tmp_path):
    service = AdapterService(db, LocalBlobStore(tmp_path / "blobs"), quota=AdapterQuota(max_adapters=2, max_bytes=1 << 30))
    first = await _create(service, tenant.tenant_id, "q0", tmp_path, 0)
    await _create(service, tenant.tenant_id, "q1", tmp_path, 1)
    with pytest.raises(Conflict) as refused:
        await _create(service, tenant.tenant_id, "q2", tmp_path, 2)
    assert refused.value.code == "adapter_quota_exceeded" and "2 adapters" in str(refused.value)
    await _create(service, other_tenant.tenant_id, "q2", tmp_path, 2)  # the quota is per tenant
    await service.delete(tenant.tenant_id, first.id)
    assert (await _create(service, tenant.tenant_id, "q2", tmp_path, 3)).name == "q2"


async def test_an_adapter_that_would_pass_the_byte_quota_is_refused_and_nothing_is_kept(base, db, tenant, tmp_path):
    blobs = LocalBlobStore(tmp_path / "blobs")
    one = await _create(AdapterService(db, blobs), tenant.tenant_id, "b0", tmp_path, 0)
    service = AdapterService(db, blobs, quota=AdapterQuota(max_adapters=100, max_bytes=one.size_bytes * 3 // 2))
    with pytest.raises(Conflict) as refused:
        await _create(service, tenant.tenant_id, "b1", tmp_path, 1)
    assert refused.value.code == "adapter_quota_exceeded" and refused.value.param == "file"
    assert [adapter.name for adapter in (await service.list(tenant.tenant_id)).data] == ["b0"]
