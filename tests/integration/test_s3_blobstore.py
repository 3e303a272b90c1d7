"""The S3 blob store against a local S3-compatible server (moto's), over real HTTP with boto3."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lorafleet.adapters.blobstore import S3BlobStore
from lorafleet.devtools.services import free_port


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_put_fetch_delete_round_trip(s3_endpoint, tmp_path: Path):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="adapters")
    store = S3BlobStore("adapters", endpoint_url=s3_endpoint)
    source = tmp_path / "weights"
    source.write_bytes(os.urandom(3 * 1024 * 1024))
    sha = "ab" * 32
    store.put(sha, source)
    store.put(sha, source)  # the same bytes again: stored once
    keys = [o["Key"] for o in store._s3.list_objects_v2(Bucket="adapters").get("Contents", [])]
    assert keys == [f"blobs/{sha}"]
    fetched = tmp_path / "fetched"
    store.fetch(sha, fetched)
    assert fetched.read_bytes() == source.read_bytes()
    with store.open(sha) as reader:  # a download's stream: the body as it arrives, in pieces
        pieces = list(iter(lambda: reader.read(256 * 1024), b""))
    assert len(pieces) > 1 and b"".join(pieces) == source.read_bytes()
    store.delete(sha)
    assert store._s3.list_objects_v2(Bucket="adapters").get("KeyCount", 0) == 0


def test_the_answer_spool_in_the_bucket(s3_endpoint):
    """A batch's large answers under their own prefix; deleting the batch takes every one (pages of 1,000)."""
    import boto3
    from lorafleet.gateway.batches.spool import S3AnswerSpool, answer_key

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="answers")
    spool = S3AnswerSpool("answers", endpoint_url=s3_endpoint)
    for line in range(1, 1203):
        spool.put(answer_key("batch_a", line, 1), b"x")
    spool.put(answer_key("batch_b", 1, 1), b"kept")
    assert spool.get(answer_key("batch_a", 7, 1)) == b"x"
    spool.delete(answer_key("batch_a", 7, 1))
    spool.delete_batch("batch_a")
    keys = [o["Key"] for o in spool._s3.list_objects_v2(Bucket="answers").get("Contents", [])]
    assert keys == ["blobs/batch-answers/batch_b/1-1"]
