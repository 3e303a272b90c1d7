"""Adapter records: create from validated files, list, get, delete — always within one tenant.

Another tenant's adapter is answered exactly like a missing one. Validation runs before anything
is stored; a record that cannot be written leaves no blob behind unless another adapter uses it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import msgspec
from lorafleet.adapters.architecture import Architecture
from lorafleet.adapters.archive import check_parts
from lorafleet.adapters.blobstore import BlobStore
from lorafleet.adapters.export import AdapterArchive, peft_config
from lorafleet.adapters.sandbox import SandboxLimits, inspect_upload
from lorafleet.adapters.validation import BaseModelSpec, shown
from lorafleet.core import ids
from lorafleet.core.errors import BlobStoreUnavailable, Conflict, InvalidRequest, NotFound
from lorafleet.core.types import ADAPTER_NAME_PATTERN, ADAPTER_NAME_RULE, Page, page_of
from lorafleet.db import queries

# Letters, digits, '.', '_', '-'; starts with a letter or digit; no ':' (it separates base:adapter).
ADAPTER_NAME = re.compile(ADAPTER_NAME_PATTERN)
NAME_RULE = ADAPTER_NAME_RULE


class AdapterView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    version: int  # immutable versions of one name: 1, 2, …; `name@v2` names this one in a request's `model`
    base_model: str
    rank: int
    target_modules: list[str]
    size_bytes: int
    sha256: str
    status: str
    created_at: dt.datetime
    object: str = "adapter"
    fine_tuned_model: str | None = None  # a fine-tuning job's result: the public name it also answers to


class AdapterPin(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    base_model: str
    pinned: bool
    object: str = "adapter_pin"


class AdapterVersionStats(msgspec.Struct, frozen=True, kw_only=True):
    """One adapter version's numbers from the ledger over a window (the operator's and the dashboard's)."""

    adapter_id: str
    tenant_id: str
    name: str
    version: int
    status: str
    requests: int
    errors: int  # the platform's failures: upstream errors and unavailable (client disconnects apart)
    client_disconnects: int
    prompt_tokens: int
    completion_tokens: int
    ttft_ms_p50: int | None
    ttft_ms_p95: int | None
    object: str = "adapter.version_stats"


@dataclass(frozen=True, slots=True)
class AdapterQuota:
    """What one tenant may keep: adapters and bytes of weights (checked in the insert's transaction)."""

    max_adapters: int
    max_bytes: int

    def check(self, adapters: int, stored_bytes: int, new_bytes: int) -> None:
        if adapters + 1 > self.max_adapters:
            raise Conflict(f"this account already has {adapters} adapters, its limit; delete one first",
                           param="name", code="adapter_quota_exceeded")
        if stored_bytes + new_bytes > self.max_bytes:
            raise Conflict(f"this adapter's {new_bytes} bytes would take the account past its {self.max_bytes} bytes "
                           "of adapters; delete one first", param="file", code="adapter_quota_exceeded")


class AdapterService:
    def __init__(self, pool: asyncpg.Pool, blobs: BlobStore, limits: SandboxLimits | None = None, *,
                 quota: AdapterQuota | None = None, concurrent_inspections: int = max(1, os.cpu_count() or 1)) -> None:
        self._pool = pool
        self._blobs = blobs
        self._quota = quota or AdapterQuota(max_adapters=1000, max_bytes=10 * 1024**3)
        self._limits = limits or SandboxLimits(max_files=16, max_bytes=256 * 1024 * 1024)
        # Each inspection child may use up to limits.memory_bytes: only a few at once.
        self._inspections = asyncio.Semaphore(concurrent_inspections)

    async def _base_specs(self) -> dict[str, tuple[str, BaseModelSpec]]:
        """Every base model by name: (id, what an adapter is validated against)."""
        specs = {}
        for row in await self._pool.fetch(queries.list_base_model_specs):
            architecture = msgspec.convert(row["architecture"], Architecture) if row["architecture"] else None
            specs[row["name"]] = (row["id"], BaseModelSpec(row["name"], architecture, row["max_lora_rank"]))
        return specs

    async def create(self, tenant_id: str, name: str, base_model: str | None, parts: list[tuple[str, Path]],
                     workdir: Path, *, fine_tuned_model: str | None = None) -> AdapterView:
        """Validate uploaded files (or one archive) in the sandbox and store the adapter.

        Cheap checks first (the name), then unpacking and validation in a resource-limited child
        process (adapters/sandbox.py), a few at a time, then the blob and the row.
        """
        # A fine-tuning job's result or checkpoint is named by its public ft: name, which no upload can take
        # (the pattern has no ':'): a tenant cannot make its job's registration fail after training.
        fine_tuned = fine_tuned_model is not None and name == fine_tuned_model and name.startswith("ft:")
        if not fine_tuned and not ADAPTER_NAME.match(name):
            raise InvalidRequest(f"invalid adapter name {shown(name)}: {NAME_RULE}", param="name")
        check_parts(parts, max_files=self._limits.max_files, max_bytes=self._limits.max_bytes)  # before a sandbox starts
        specs = await self._base_specs()
        if name in specs:
            raise InvalidRequest("an adapter cannot take a base model's name", param="name")
        async with self._inspections:
            inspection = await inspect_upload(parts, workdir, [spec for _, spec in specs.values()], base_model,
                                              self._limits)
        base_id = specs[inspection.base_model][0]
        valid = inspection.adapter
        await asyncio.to_thread(self._blobs.put, valid.sha256, valid.weights_path)
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                await connection.execute(queries.lock_tenant_adapters, tenant_id)
                usage = await connection.fetchrow(queries.tenant_adapter_usage, tenant_id)
                self._quota.check(usage["adapters"], usage["bytes"], valid.size_bytes)
                await connection.execute(queries.insert_blob, valid.sha256, valid.size_bytes)
                adapter_id = ids.new_id("adp")
                # An existing name gets its next version (insert_adapter numbers it under the tenant's lock).
                await connection.fetchrow(
                    queries.insert_adapter, adapter_id, tenant_id, name, base_id, valid.rank, valid.lora_alpha,
                    valid.target_modules, valid.config, valid.sha256, valid.size_bytes,
                )
                if fine_tuned_model is not None:  # a fine-tuning job's result (trainer/runner.py)
                    await connection.execute(queries.set_adapter_fine_tuned_model, adapter_id, tenant_id,
                                             fine_tuned_model)
        except asyncpg.UniqueViolationError:
            await self._release_blob(valid.sha256)
            raise Conflict(f"an adapter named {name!r} already exists", param="name") from None
        except BaseException:
            await self._release_blob(valid.sha256)
            raise
        return await self.get(tenant_id, adapter_id)

    async def list(self, tenant_id: str, *, after: str | None = None, limit: int = 100) -> Page[AdapterView]:
        rows = await self._pool.fetch(queries.list_adapters, tenant_id, after, limit + 1)
        return page_of([AdapterView(**dict(row)) for row in rows], limit)

    async def list_all(self, tenant_id: str) -> list[AdapterView]:
        adapters: list[AdapterView] = []
        after: str | None = None
        while True:
            page = await self.list(tenant_id, after=after, limit=1000)
            adapters += page.data
            if not page.has_more:
                return adapters
            after = page.data[-1].id

    async def set_pinned(self, adapter_id: str, pinned: bool) -> AdapterPin:
        """Operator only (any tenant's adapter): keep it resident on every worker of its base model."""
        row = await self._pool.fetchrow(queries.set_adapter_pinned, adapter_id, pinned)
        if row is None:
            raise NotFound(f"no adapter {adapter_id!r}", param="adapter_id")
        return AdapterPin(**dict(row))

    async def version_stats(self, since: dt.datetime, *, tenant_id: str | None = None, name: str | None = None,
                            limit: int = 1000) -> list[AdapterVersionStats]:
        """Requests, failures, tokens and TTFT p50/p95 per adapter version since ``since``, from the ledger."""
        rows = await self._pool.fetch(queries.adapter_version_stats, tenant_id, name, since, limit)
        return [AdapterVersionStats(**dict(row)) for row in rows]

    async def labels(self, adapter_ids: list[str]) -> dict[str, str]:
        """``name (tenant)`` for each id, for the operator's view of what workers hold."""
        rows = await self._pool.fetch(queries.adapter_names, adapter_ids)
        return {row["id"]: f"{row['name']} ({row['tenant_name']})" for row in rows}

    async def find(self, tenant_id: str, adapter_id: str) -> AdapterView | None:
        row = await self._pool.fetchrow(queries.get_adapter, adapter_id, tenant_id)
        return AdapterView(**dict(row)) if row else None

    async def get(self, tenant_id: str, adapter_id: str) -> AdapterView:
        row = await self._pool.fetchrow(queries.get_adapter, adapter_id, tenant_id)
        if row is None:
            raise NotFound(f"no adapter {adapter_id!r}", param="adapter_id")
        return AdapterView(**dict(row))

    async def archive(self, tenant_id: str, adapter_id: str) -> AdapterArchive:
        """The owner's adapter version as a PEFT-loadable tar (adapters/export.py); another tenant's: 404."""
        row = await self._pool.fetchrow(queries.adapter_export, adapter_id, tenant_id)
        if row is None:
            raise NotFound(f"no adapter {adapter_id!r}", param="adapter_id")
        return AdapterArchive(f"{row['name']}-v{row['version']}", peft_config(row["config"], row["base_model"]),
                              row["size_bytes"], row["sha256"], int(row["created_at"].timestamp()),
                              lambda: self._blobs.open(row["sha256"]))

    async def checkpoint_adapter(self, tenant_id: str, job_id: str, checkpoint_id: str) -> str:
        """The adapter id a fine-tuning checkpoint of the tenant's job was registered as."""
        found = await self._pool.fetchval(queries.checkpoint_adapter, tenant_id, job_id, checkpoint_id)
        if found is None:
            raise NotFound(f"no checkpoint {checkpoint_id!r} with servable weights in job {job_id!r}",
                           param="checkpoint_id")
        return found

    async def delete(self, tenant_id: str, adapter_id: str) -> AdapterView:
        view = await self.get(tenant_id, adapter_id)
        aliases = await self._pool.fetch(queries.aliases_targeting, tenant_id, adapter_id)
        if aliases:  # its callers would silently move to another version: move the alias first
            names = ", ".join(f"{row['name']}@{row['alias']}" for row in aliases)
            raise Conflict(f"version {view.version} of {view.name!r} is a target of {names}; move or delete "
                           "the alias first", param="adapter_id", code="adapter_version_in_use")
        row = await self._pool.fetchrow(queries.delete_adapter, adapter_id, tenant_id)
        if row is None:
            raise NotFound(f"no adapter {adapter_id!r}", param="adapter_id")
        await self._release_blob(row["sha256"])
        return msgspec.structs.replace(view, status="deleted")

    async def _release_blob(self, sha256: str) -> None:
        """Delete the bytes once no adapter that still exists references them.

        A store that fails to delete leaves the bytes behind (logged by the store): the adapter's
        deletion, already committed, stands, and the bytes are unreachable without a record.
        """
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                if await connection.fetchval(queries.unreferenced_blob, sha256) is not None:
                    await asyncio.to_thread(self._blobs.delete, sha256)
                    return
            if not await self._pool.fetchval(queries.blob_exists, sha256):
                await asyncio.to_thread(self._blobs.delete, sha256)  # a failed first upload: the row never existed
        except BlobStoreUnavailable:
            return
