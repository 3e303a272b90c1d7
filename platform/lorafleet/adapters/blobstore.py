"""Content-addressed storage of adapter weights: one object per sha256.

``LocalBlobStore`` keeps them in a folder (the default, and what one machine needs);
``S3BlobStore`` in an S3-compatible bucket (the `s3` extra, boto3), for fleets whose gateways and
workers do not share a disk. Both are content-addressed: putting the same bytes twice stores once.
:meth:`BlobStore.open` reads a blob as a stream (a local file's handle; S3's response body), so a
download is sent as it is read, never copied whole first.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import structlog
from lorafleet.core.errors import BlobStoreUnavailable
from lorafleet.core.settings import FleetSettings

log = structlog.get_logger(__name__)


@contextmanager
def store_errors(operation: str, sha256: str, *transient: type[BaseException]) -> Iterator[None]:
    """Any failure of the store itself (a disk, permissions, the network) as BlobStoreUnavailable:
    callers answer a clear 503 and store nothing; the cause goes to the log, never to a client."""
    try:
        yield
    except (OSError, *transient) as exc:
        log.error("blob_store_failed", operation=operation, sha256=sha256, error=repr(exc)[:300])
        raise BlobStoreUnavailable from exc


class BlobStore(Protocol):
    def put(self, sha256: str, source: Path) -> None: ...
    def fetch(self, sha256: str, target: Path) -> None: ...
    def open(self, sha256: str) -> BinaryIO: ...
    def delete(self, sha256: str) -> None: ...


class StoreErrorsWhileReading(io.RawIOBase):
    """A readable stream whose read errors become BlobStoreUnavailable (the store failed mid-read)."""

    def __init__(self, raw: Any, sha256: str, *transient: type[BaseException]) -> None:
        self._raw = raw
        self._sha256 = sha256
        self._transient = transient

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with store_errors("read", self._sha256, *self._transient):
            data = self._raw.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, sha256: str, source: Path) -> None:
        final = self.path(sha256)
        with store_errors("put", sha256):
            if final.exists():
                return  # same bytes, already stored
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = final.with_name(f".{sha256}.{os.getpid()}.partial")
            try:
                shutil.copyfile(source, partial)
                os.replace(partial, final)  # atomic: readers never see half a file
            finally:
                partial.unlink(missing_ok=True)

    def fetch(self, sha256: str, target: Path) -> None:
        with store_errors("fetch", sha256):
            shutil.copyfile(self.path(sha256), target)

    def open(self, sha256: str) -> BinaryIO:
        """The blob's bytes as a buffered stream (reading stays valid if the blob is deleted meanwhile)."""
        with store_errors("open", sha256):
            raw = open(self.path(sha256), "rb", buffering=0)  # noqa: SIM115 - the caller closes it
        return io.BufferedReader(StoreErrorsWhileReading(raw, sha256))

    def delete(self, sha256: str) -> None:
        with store_errors("delete", sha256):
            self.path(sha256).unlink(missing_ok=True)


class S3BlobStore:
    """Blobs as ``<prefix><sha256>`` objects; credentials come from boto3's usual sources."""

    def __init__(self, bucket: str, *, prefix: str = "blobs/", endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        import boto3  # optional dependency: the `s3` extra

        self.bucket = bucket
        self.prefix = prefix
        self._s3 = boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None)

    def _key(self, sha256: str) -> str:
        return f"{self.prefix}{sha256}"

    def _errors(self, operation: str, sha256: str):
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        return store_errors(operation, sha256, BotoCoreError, ClientError, Boto3Error)

    def put(self, sha256: str, source: Path) -> None:
        from botocore.exceptions import ClientError

        with self._errors("put", sha256):
            try:
                self._s3.head_object(Bucket=self.bucket, Key=self._key(sha256))
                return  # same bytes, already stored
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
            # upload_file switches to multipart for large files; the object appears only when complete.
            self._s3.upload_file(str(source), self.bucket, self._key(sha256))

    def fetch(self, sha256: str, target: Path) -> None:
        with self._errors("fetch", sha256):
            self._s3.download_file(self.bucket, self._key(sha256), str(target))

    def open(self, sha256: str) -> BinaryIO:
        """The object's body as it arrives (one GET, read in chunks), never downloaded whole first."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        with self._errors("open", sha256):
            body = self._s3.get_object(Bucket=self.bucket, Key=self._key(sha256))["Body"]
        raw = StoreErrorsWhileReading(body, sha256, BotoCoreError, ClientError, Boto3Error)
        return io.BufferedReader(raw)

    def delete(self, sha256: str) -> None:
        with self._errors("delete", sha256):
            self._s3.delete_object(Bucket=self.bucket, Key=self._key(sha256))


def make_blob_store(settings: FleetSettings) -> BlobStore:
    """The blob store the settings name (``LORAFLEET_BLOB_STORE``)."""
    if settings.blob_store == "s3":
        return S3BlobStore(settings.s3_bucket, prefix=settings.s3_prefix, endpoint_url=settings.s3_endpoint_url,
                           region=settings.s3_region)
    return LocalBlobStore(settings.resolved_blob_dir)
