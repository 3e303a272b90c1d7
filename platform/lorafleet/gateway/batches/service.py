"""The Batch API's side in the gateway: create, read, list, cancel — always within one tenant.

A batch is created ``validating``; a dispatcher (dispatcher.py, in any gateway) validates its file, runs
its lines and ends it. Another tenant's batch is answered exactly like one that never existed (404).
Create holds room in the tenant's file quota for the batch's worst-case output (each line's answer bound,
answer_bound.py, as for the widest model serving the endpoint) and refuses a batch whose output cannot fit
(409 ``storage_quota_exceeded``, ``param: input_file_id``); its lines are not dispatched before
``LORAFLEET_BATCH_MIN_DELAY_SECONDS``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import OrderedDict
from typing import Any

import asyncpg
from lorafleet.core import ids
from lorafleet.core.errors import Conflict, InvalidRequest, NotFound, RateLimited
from lorafleet.core.settings import GatewaySettings
from lorafleet.db import queries
from lorafleet.files.service import FileService, StoredFile
from lorafleet.gateway.batches.answer_bound import OUTPUT_OBJECTS
from lorafleet.gateway.batches.validation import REQUEST_TYPES, output_bound_of_file
from lorafleet.gateway.fleet.catalog import BaseModel, ModelCatalog
from lorafleet.tenancy.storage import QUOTA_EXCEEDED
from lorafleet.gateway.batches.schemas import (
    Batch,
    BatchCreate,
    BatchError,
    BatchErrors,
    BatchPage,
    BatchUsage,
    InputTokensDetails,
    OutputTokensDetails,
    RequestCounts,
    stamp,
)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def batch_view(row: asyncpg.Record) -> Batch:
    errors = _json(row["errors"])
    usage = BatchUsage(input_tokens=row["input_tokens"],
                       input_tokens_details=InputTokensDetails(cached_tokens=row["cached_tokens"]),
                       output_tokens=row["output_tokens"], output_tokens_details=OutputTokensDetails(),
                       total_tokens=row["input_tokens"] + row["output_tokens"])
    return Batch(
        id=row["id"], endpoint=row["endpoint"], input_file_id=row["input_file_id"],
        completion_window=row["completion_window"], status=row["status"], created_at=stamp(row["created_at"]),  # type: ignore[arg-type]
        expires_at=stamp(row["expires_at"]),
        request_counts=RequestCounts(total=row["total"], completed=row["completed"], failed=row["failed"]),
        usage=usage, errors=BatchErrors(data=[BatchError(**e) for e in errors]) if errors else None,
        output_file_id=row["output_file_id"], error_file_id=row["error_file_id"],
        in_progress_at=stamp(row["in_progress_at"]), finalizing_at=stamp(row["finalizing_at"]),
        completed_at=stamp(row["completed_at"]), failed_at=stamp(row["failed_at"]),
        expired_at=stamp(row["expired_at"]), cancelling_at=stamp(row["cancelling_at"]),
        cancelled_at=stamp(row["cancelled_at"]), metadata=_json(row["metadata"]), model=row["model"])


SCANS_AT_ONCE = 2            # input files read at once by one gateway's creates (each about a core while it runs)
REMEMBERED_BOUNDS = 1024     # files whose output bound a gateway remembers


def not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch {batch_id[:100]!r}", param="batch_id")


class Batches:
    def __init__(self, pool: asyncpg.Pool, files: FileService, catalog: ModelCatalog, settings: GatewaySettings) -> None:
        self._pool = pool
        self._files = files
        self._catalog = catalog
        self._settings = settings
        self._max_file_bytes = settings.batch_max_file_bytes
        self._window = settings.batch_completion_window_seconds
        self._min_delay = settings.batch_min_delay_seconds
        self._max_open = settings.tenant_max_open_batches
        # Each open batch keeps a copy of its lines in the database until it ends: the input bytes of a
        # tenant's open batches stay within its file quota.
        self._max_open_bytes = settings.tenant_max_file_bytes
        self._scans = asyncio.Semaphore(SCANS_AT_ONCE)
        self._bounds: OrderedDict[tuple[str, str, int, int], int] = OrderedDict()

    def _widest_model(self, endpoint: str) -> BaseModel | None:
        """The largest context and hidden size among the models that serve ``endpoint``'s task: a line's
        answer bound for it is at least its bound for the model it names."""
        task = REQUEST_TYPES[endpoint][1]
        models = [model for model in self._catalog.all() if model.task == task]
        if not models:
            return None
        hidden = [model.hidden_size for model in models]
        return BaseModel(id="", name="", max_model_len=max(model.max_model_len for model in models), created=0,
                         task=task, hidden_size=None if None in hidden else max(hidden))  # type: ignore[type-var]

    async def output_bound(self, stored: StoredFile, endpoint: str) -> int:
        """The most bytes a batch of this file can write into its output and error files: its lines read from
        the blob store as it streams and checked as validation checks them, off the event loop, a few files
        at a time per gateway, and remembered (a file never changes)."""
        widest = self._widest_model(endpoint)
        key = (stored.view.id, endpoint, widest.max_model_len if widest else 0, widest.hidden_size if widest else 0)
        async with self._scans:
            known = self._bounds.get(key)
            if known is not None:
                self._bounds.move_to_end(key)
                return known
            reader = await self._files.open(stored)
            try:
                bound = await asyncio.to_thread(output_bound_of_file, reader, endpoint, widest, self._settings)
            finally:
                await asyncio.to_thread(reader.close)
        self._bounds[key] = bound
        while len(self._bounds) > REMEMBERED_BOUNDS:
            self._bounds.popitem(last=False)
        return bound

    async def create(self, tenant_id: str, key_id: str, data: BatchCreate) -> Batch:
        stored = await self._files.find(tenant_id, data.input_file_id)
        if stored is None:
            raise InvalidRequest(f"input_file_id {data.input_file_id[:64]!r} is not one of your files",
                                 param="input_file_id", code="invalid_file")
        if stored.view.purpose != "batch":
            raise InvalidRequest(f"input_file_id {data.input_file_id[:64]!r} was uploaded with purpose "
                                 f"{stored.view.purpose!r}, not 'batch'", param="input_file_id",
                                 code="invalid_file_purpose")
        if stored.view.bytes > self._max_file_bytes:
            raise InvalidRequest(f"the input file has {stored.view.bytes} bytes, more than the {self._max_file_bytes} "
                                 "a batch may have; split it", param="input_file_id", code="file_too_large")
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._window)
        output_expiry = data.output_expires_after.seconds if data.output_expires_after else None
        output_bytes = await self.output_bound(stored, data.endpoint)
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(queries.lock_tenant_batches, tenant_id)
            open_now = await connection.fetchrow(queries.open_batches_of_tenant, tenant_id)
            if open_now["batches"] >= self._max_open:
                raise RateLimited(f"this account has {open_now['batches']} batches not finished, its limit; wait "
                                  "for one to finish or cancel one", code="too_many_batches",
                                  headers={"Retry-After": "60"})
            # Each open batch keeps its lines in the database until it ends: their bytes count against the
            # tenant's file quota, so one file cannot back a hundred batches' worth of copies.
            if open_now["bytes"] + stored.view.bytes > self._max_open_bytes:
                raise RateLimited(f"the input files of this account's unfinished batches would pass "
                                  f"{self._max_open_bytes} bytes; wait for one to finish or cancel one",
                                  code="too_many_batches", headers={"Retry-After": "60"})
            # Its output may take this much of the file quota: held now (uploads cannot take it meanwhile),
            # given back as the output files take their room when it ends.
            storage = self._files.storage
            if not await storage.reserve(connection, tenant_id, output_bytes, OUTPUT_OBJECTS):
                used = await storage.usage(tenant_id)
                quota = storage.quota
                raise Conflict(
                    f"this batch's output and error files may take up to {output_bytes} bytes (each line's answer "
                    f"bound, from its max_tokens, n, logprobs and echo, at most "
                    f"{self._settings.batch_max_answer_bytes}), more than this account's file quota has room for "
                    f"({max(0, quota.max_bytes - used.bytes)} of {quota.max_bytes} bytes, "
                    f"{max(0, quota.max_objects - used.objects)} of {quota.max_objects} files left, open batches' "
                    "outputs included); delete files, split the batch, or ask for fewer tokens or logprobs per line",
                    param="input_file_id", code=QUOTA_EXCEEDED)
            row = await connection.fetchrow(queries.insert_batch, ids.batch_id(), tenant_id, key_id, data.endpoint,
                                            data.input_file_id, data.completion_window, data.metadata, expires_at,
                                            output_expiry, self._min_delay, output_bytes)
        return batch_view(row)

    async def get(self, tenant_id: str, batch_id: str) -> Batch:
        row = await self._pool.fetchrow(queries.tenant_batches, tenant_id, batch_id, None, 1)
        if row is None:
            raise not_found(batch_id)
        return batch_view(row)

    async def list(self, tenant_id: str, *, after: str | None, limit: int) -> BatchPage:
        rows = await self._pool.fetch(queries.tenant_batches, tenant_id, None, after, limit + 1)
        data = [batch_view(row) for row in rows[:limit]]
        return BatchPage(data=data, has_more=len(rows) > limit, first_id=data[0].id if data else None,
                         last_id=data[-1].id if data else None)

    async def cancel(self, tenant_id: str, batch_id: str) -> Batch:
        if await self._pool.fetchval(queries.cancel_batch, batch_id, tenant_id) is None:
            batch = await self.get(tenant_id, batch_id)  # 404, or a batch already ending or ended
            if batch.status in ("validating", "in_progress"):  # its window is over, or a gateway is ending it
                raise InvalidRequest("the batch is ending (its window is over, or its last lines are done); it "
                                     "cannot be cancelled any more", param="batch_id", code="batch_not_cancellable")
            if batch.status not in ("cancelling", "cancelled"):
                raise InvalidRequest(f"the batch is {batch.status}; only a batch validating or in progress can be "
                                     "cancelled", param="batch_id", code="batch_not_cancellable")
            return batch
        return await self.get(tenant_id, batch_id)
