"""Files: OpenAI's ``file`` objects, their bytes in the blob store (content-addressed), tenant-scoped.

Uploads (``fine-tune``, ``batch``) come through the gateway (gateway/files); jobs write their own
outputs (``fine-tune-results``, ``batch_output``) with :meth:`FileService.store`. Every read names
the tenant: another tenant's file is answered exactly like one that never existed. Room is charged
in ``tenant_storage`` (kind ``files``) in the transaction that inserts the row and given back in the
one that deletes it, so concurrent uploads cannot pass the quota together.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import asyncpg
import msgspec
from lorafleet.adapters.blobstore import BlobStore
from lorafleet.core import ids
from lorafleet.core.errors import BlobStoreUnavailable, Conflict, NotFound
from lorafleet.db import queries
from lorafleet.tenancy.storage import QUOTA_EXCEEDED, TenantStorage

UPLOAD_PURPOSES = ("fine-tune", "batch")
Purpose = Literal["fine-tune", "batch", "fine-tune-results", "batch_output"]


class FileObject(msgspec.Struct, kw_only=True):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: Purpose
    status: Literal["uploaded", "processed", "error", "deleted"]
    expires_at: int | None = None
    status_details: str | None = None
    object: Literal["file"] = "file"


class FilePage(msgspec.Struct, kw_only=True):
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
    object: Literal["list"] = "list"


class FileDeleted(msgspec.Struct, kw_only=True):
    id: str
    deleted: bool
    object: Literal["file"] = "file"


@dataclass(frozen=True)
class StoredFile:
    """What a job needs of a file: its view, and where its bytes are."""

    view: FileObject
    blob_key: str


def _stamp(value: dt.datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _view(row: asyncpg.Record) -> FileObject:
    return FileObject(id=row["id"], bytes=row["bytes"], created_at=_stamp(row["created_at"]),  # type: ignore[arg-type]
                      filename=row["filename"], purpose=row["purpose"], status=row["status"],
                      expires_at=_stamp(row["expires_at"]))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class FileService:
    def __init__(self, pool: asyncpg.Pool, blobs: BlobStore, storage: TenantStorage) -> None:
        self._pool = pool
        self._blobs = blobs
        self.storage = storage

    async def store(self, tenant_id: str, purpose: str, filename: str, source: Path, *,
                    expires_after_seconds: int | None = None) -> FileObject:
        """Put ``source`` into the blob store and record it for the tenant (409 past the quota)."""
        await self.storage.check_room(tenant_id, source.stat().st_size, param="file")
        blob_key, file_id = await self.put_blob(source)
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                return await self.record(connection, tenant_id, purpose, filename, source.stat().st_size, blob_key,
                                         file_id=file_id, expires_after_seconds=expires_after_seconds)
        except BaseException:
            await self._release_blob(blob_key)
            raise

    async def put_blob(self, source: Path) -> tuple[str, str]:
        """``source``'s bytes into the blob store under a key of a new file id: (blob key, file id)."""
        file_id = ids.file_id()
        blob_key = hashlib.sha256(f"{file_id}:{await asyncio.to_thread(sha256_of, source)}".encode()).hexdigest()
        await asyncio.to_thread(self._blobs.put, blob_key, source)
        return blob_key, file_id

    async def record(self, connection: asyncpg.Connection, tenant_id: str, purpose: str, filename: str, size: int,
                     blob_key: str, *, file_id: str, expires_after_seconds: int | None = None,
                     within_quota: bool = True) -> FileObject:
        """The file's row, in ``connection``'s transaction (a job records its outputs with its own state)."""
        expires_at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_after_seconds)
                      if expires_after_seconds else None)
        if not await self.storage.charge(connection, tenant_id, size, within_quota=within_quota):
            raise Conflict("this account's files are at their quota; delete some first", param="file",
                           code=QUOTA_EXCEEDED)
        row = await connection.fetchrow(queries.insert_file, file_id, tenant_id, purpose,
                                        filename[:255] or "upload", size, blob_key, expires_at)
        return _view(row)

    async def forget_blob(self, blob_key: str) -> None:
        """A blob put for a file that was not recorded after all."""
        await self._release_blob(blob_key)

    async def list(self, tenant_id: str, *, purpose: str | None = None, after: str | None = None,
                   limit: int = 100) -> FilePage:
        rows = await self._pool.fetch(queries.list_files, tenant_id, purpose, after, limit + 1)
        data = [_view(row) for row in rows[:limit]]
        return FilePage(data=data, has_more=len(rows) > limit, first_id=data[0].id if data else None,
                        last_id=data[-1].id if data else None)

    async def find(self, tenant_id: str, file_id: str, *, expired_too: bool = False) -> StoredFile | None:
        """One of the tenant's files; ``expired_too``: also one past its expiry not yet deleted (for a job
        that took it while it was live: the janitor waits for the job)."""
        row = await self._pool.fetchrow(queries.get_file, file_id, tenant_id, expired_too)
        return StoredFile(_view(row), row["blob_key"]) if row else None

    async def get(self, tenant_id: str, file_id: str, *, param: str = "file_id") -> StoredFile:
        found = await self.find(tenant_id, file_id)
        if found is None:
            raise NotFound(f"No such File object: {file_id[:100]}", param=param)
        return found

    async def fetch(self, stored: StoredFile, target: Path) -> None:
        """The file's bytes into ``target`` (a local path)."""
        await asyncio.to_thread(self._blobs.fetch, stored.blob_key, target)

    async def open(self, stored: StoredFile) -> BinaryIO:
        """The file's bytes as a stream from the blob store (the caller reads it off the event loop and closes it)."""
        return await asyncio.to_thread(self._blobs.open, stored.blob_key)

    async def delete(self, tenant_id: str, file_id: str) -> FileDeleted:
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(queries.delete_file, file_id, tenant_id)
            if row is None:
                raise NotFound(f"No such File object: {file_id[:100]}", param="file_id")
            await self.storage.refund(connection, tenant_id, row["bytes"])
        await self._release_blob(row["blob_key"])
        return FileDeleted(id=file_id, deleted=True)

    async def delete_expired(self, limit: int) -> int:
        """Deletes up to ``limit`` files past their ``expires_at`` (row, room in the tenant's quota, blob),
        as :meth:`delete` does one; the number deleted. files/janitor.py calls it periodically."""
        async with self._pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(queries.expire_files, limit)
            for row in rows:
                await self.storage.refund(connection, row["tenant_id"], row["bytes"])
        for row in rows:
            await self._release_blob(row["blob_key"])
        return len(rows)

    async def _release_blob(self, blob_key: str) -> None:
        """Each file has a blob of its own; a failed delete leaves the bytes behind (logged by the store)."""
        try:
            await asyncio.to_thread(self._blobs.delete, blob_key)
        except BlobStoreUnavailable:
            return
