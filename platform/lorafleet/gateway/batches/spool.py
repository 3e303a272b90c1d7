"""Where a running batch keeps its large answers until its files are written: the blob store, not PostgreSQL.

A finished line's answer up to :data:`INLINE_ANSWER_BYTES` stays in its ``batch_lines`` row; a larger one is
written here, under the batch's own prefix, and the row keeps only its key. Measured
(benchmarks/results/batch_answers.md): a 1 MiB answer stored in the row costs about 73 ms and 1.1 MiB of
WAL (replicated, archived, backed up) for bytes that live a few hours at most; in the blob store 4 ms and
1 KiB of WAL; a side table written once costs what the row does. Small answers are faster in the row
(4 KiB: 3.4 ms against 4.0 ms) and are most answers (200 plain tokens are about 1.5 KB).

Keys are ``<batch id>/<line>-<attempt>``, unique to the dispatcher holding that attempt: a dispatcher whose
answer is not stored after all (it lost the line, the batch ended) deletes its own; once the batch's files
are written, the finalizer deletes the whole prefix — which also takes any a dispatcher wrote before it died.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol

from lorafleet.adapters.blobstore import store_errors
from lorafleet.core.settings import FleetSettings

INLINE_ANSWER_BYTES = 16 * 1024
FOLDER = "batch-answers"


def answer_key(batch_id: str, line: int, attempt: int) -> str:
    return f"{batch_id}/{line}-{attempt}"


class AnswerSpool(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def delete_batch(self, batch_id: str) -> None: ...


class LocalAnswerSpool:
    """A folder per batch under the local blob store's folder (shared by the gateways of one machine)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        batch_id, name = key.split("/")
        return self.root / batch_id / name

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        with store_errors("spool_put", key):
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
            try:
                partial.write_bytes(data)
                os.replace(partial, path)  # whole or absent: the finalizer never reads half an answer
            finally:
                partial.unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        with store_errors("spool_get", key):
            return self._path(key).read_bytes()

    def delete(self, key: str) -> None:
        with store_errors("spool_delete", key):
            self._path(key).unlink(missing_ok=True)

    def delete_batch(self, batch_id: str) -> None:
        folder = self.root / batch_id
        with store_errors("spool_delete_batch", batch_id):
            if folder.exists():
                shutil.rmtree(folder)


class S3AnswerSpool:
    """Objects ``<prefix>batch-answers/<batch id>/<line>-<attempt>`` in the blob store's bucket."""

    def __init__(self, bucket: str, *, prefix: str = "blobs/", endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        import boto3  # optional dependency: the `s3` extra

        self.bucket = bucket
        self.prefix = f"{prefix}{FOLDER}/"
        self._s3 = boto3.client("s3", endpoint_url=endpoint_url or None, region_name=region or None)

    def _errors(self, operation: str, key: str):
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        return store_errors(operation, key, BotoCoreError, ClientError, Boto3Error)

    def put(self, key: str, data: bytes) -> None:
        with self._errors("spool_put", key):
            self._s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def get(self, key: str) -> bytes:
        with self._errors("spool_get", key):
            return self._s3.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def delete(self, key: str) -> None:
        with self._errors("spool_delete", key):
            self._s3.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def delete_batch(self, batch_id: str) -> None:
        with self._errors("spool_delete_batch", batch_id):
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                         Prefix=f"{self.prefix}{batch_id}/")
            for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:  # at most 1,000 per page, as DeleteObjects takes
                    self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})


def make_answer_spool(settings: FleetSettings) -> AnswerSpool:
    """Next to the blob store the settings name (``LORAFLEET_BLOB_STORE``), so every gateway reaches it."""
    if settings.blob_store == "s3":
        return S3AnswerSpool(settings.s3_bucket, prefix=settings.s3_prefix, endpoint_url=settings.s3_endpoint_url,
                             region=settings.s3_region)
    return LocalAnswerSpool(settings.resolved_blob_dir / FOLDER)
