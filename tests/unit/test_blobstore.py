"""The local blob store: content-addressed, atomic, and its failures one clear error (never a half file)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from lorafleet.adapters.blobstore import LocalBlobStore
from lorafleet.core.errors import BlobStoreUnavailable


def _source(tmp_path: Path, data: bytes = b"weights") -> tuple[str, Path]:
    path = tmp_path / "source.bin"
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), path


def test_put_fetch_delete_round_trip(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    sha, source = _source(tmp_path)
    store.put(sha, source)
    store.put(sha, source)  # same bytes: stored once, no error
    store.fetch(sha, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == b"weights"
    store.delete(sha)
    store.delete(sha)
    assert not store.path(sha).exists()


def test_a_store_that_cannot_be_written_or_read_is_one_error_and_leaves_nothing(tmp_path):
    blocked = tmp_path / "blobs"
    blocked.write_text("a file where the store's folder should be")
    store = LocalBlobStore(blocked)
    sha, source = _source(tmp_path)
    with pytest.raises(BlobStoreUnavailable) as raised:
        store.put(sha, source)
    assert raised.value.status_code == 503 and raised.value.code == "blob_store_unavailable"
    assert str(blocked) not in raised.value.message  # no paths to a client
    with pytest.raises(BlobStoreUnavailable):
        store.fetch(sha, tmp_path / "copy.bin")


def test_a_missing_blob_is_unavailable_not_a_crash(tmp_path):
    store = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(BlobStoreUnavailable):
        store.fetch("0" * 64, tmp_path / "copy.bin")
    assert not list((tmp_path / "blobs").glob("**/*.partial"))


def test_open_reads_a_blob_in_pieces_and_survives_its_deletion(tmp_path):
    """A download streams from the store: the blob is read piece by piece, and a delete meanwhile (the
    tenant deleted the file) does not cut a reader that already has it open."""
    store = LocalBlobStore(tmp_path / "blobs")
    data = bytes(range(256)) * 4096  # 1 MiB
    sha, source = _source(tmp_path, data)
    store.put(sha, source)
    with store.open(sha) as reader:
        first = reader.read(1000)
        store.delete(sha)
        rest = b"".join(iter(lambda: reader.read(64 * 1024), b""))
    assert first + rest == data
    with pytest.raises(BlobStoreUnavailable):
        store.open(sha)


def test_the_answer_spool_keeps_a_batch_under_its_own_prefix_and_deletes_it_whole(tmp_path):
    from lorafleet.gateway.batches.spool import LocalAnswerSpool, answer_key

    spool = LocalAnswerSpool(tmp_path / "batch-answers")
    spool.put(answer_key("batch_a", 1, 1), b"one")
    spool.put(answer_key("batch_a", 1, 1), b"again")  # the same attempt run again after a send-back: replaced
    spool.put(answer_key("batch_a", 2, 3), b"two")
    spool.put(answer_key("batch_b", 1, 1), b"other")
    assert spool.get(answer_key("batch_a", 1, 1)) == b"again"
    spool.delete(answer_key("batch_a", 2, 3))
    spool.delete(answer_key("batch_a", 2, 3))
    with pytest.raises(BlobStoreUnavailable):
        spool.get(answer_key("batch_a", 2, 3))
    spool.delete_batch("batch_a")
    spool.delete_batch("batch_a")
    assert not (tmp_path / "batch-answers" / "batch_a").exists()
    assert spool.get(answer_key("batch_b", 1, 1)) == b"other"
    assert not list((tmp_path / "batch-answers").glob("**/*.partial"))
