"""An adapter version as a PEFT-loadable archive: a plain tar, streamed, whose bytes are the same every time.

``<name>-v<version>/adapter_config.json`` is the stored config (what the workers serve) with what PEFT
needs besides (``peft_type``, ``task_type``, ``base_model_name_or_path``…), and
``<name>-v<version>/adapter_model.safetensors`` is the uploaded weights file byte for byte (its sha256 is
the adapter's ``sha256``). Headers carry fixed times and owners, so the archive's sha256 depends on the
adapter alone: it is computed by one pass over the blob before the body is sent (the response's
header), and the body is then produced by a second pass, a piece at a time (gateway/downloads.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from typing import Any, BinaryIO

from lorafleet.core.errors import BlobStoreUnavailable

BLOCK = 512
CHUNK = 64 * 1024

# What PEFT's LoraConfig reads beyond the stored fields; values that serve exactly what the workers serve.
_PEFT_DEFAULTS: dict[str, Any] = {
    "peft_type": "LORA", "task_type": "CAUSAL_LM", "lora_dropout": 0.0, "fan_in_fan_out": False,
    "inference_mode": True, "init_lora_weights": True, "modules_to_save": None, "use_dora": False,
    "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
}


def peft_config(stored: dict[str, Any], base_model: str) -> bytes:
    """adapter_config.json's bytes: the stored (validated) fields win; sorted keys, so always the same bytes."""
    config = {**_PEFT_DEFAULTS, "base_model_name_or_path": base_model, **stored}
    return (json.dumps(config, sort_keys=True, indent=2) + "\n").encode()


def _header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o644
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


class AdapterArchive:
    """The tar's pieces: fixed bytes around the blob's; ``open_blob`` opens a fresh reader of the weights."""

    def __init__(self, folder: str, config: bytes, weights_size: int, weights_sha256: str, mtime: int,
                 open_blob: Callable[[], BinaryIO]) -> None:
        self.folder = folder
        self.weights_size = weights_size
        self.weights_sha256 = weights_sha256
        self._open_blob = open_blob
        self._head = (_header(f"{folder}/adapter_config.json", len(config), mtime) + config + _padding(len(config))
                      + _header(f"{folder}/adapter_model.safetensors", weights_size, mtime))
        self._tail = _padding(weights_size) + b"\0" * (2 * BLOCK)  # end of archive: two zero blocks

    @property
    def size(self) -> int:
        return len(self._head) + self.weights_size + len(self._tail)

    def digest(self) -> str:
        """The archive's sha256 (a pass over the blob), after checking the blob is the adapter's weights."""
        archive, weights = hashlib.sha256(self._head), hashlib.sha256()
        read = 0
        with self._open_blob() as blob:
            while piece := blob.read(CHUNK):
                archive.update(piece)
                weights.update(piece)
                read += len(piece)
        if read != self.weights_size or weights.hexdigest() != self.weights_sha256:
            raise BlobStoreUnavailable(f"the stored weights of {self.folder} do not match their hash; "
                                       "the operator has been told", code="blob_corrupt")
        archive.update(self._tail)
        return archive.hexdigest()

    def reader(self) -> BinaryIO:
        return _ArchiveReader(self._head, self._open_blob(), self.weights_size, self._tail)  # type: ignore[return-value]


class _ArchiveReader(io.RawIOBase):
    """Reads the head, then the blob (exactly ``size`` bytes of it), then the tail."""

    def __init__(self, head: bytes, blob: BinaryIO, size: int, tail: bytes) -> None:
        self._pieces: list[bytes | BinaryIO] = [head, blob, tail]
        self._blob = blob
        self._left = size

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = CHUNK if size is None or size < 0 else size
        while self._pieces:
            piece = self._pieces[0]
            if isinstance(piece, bytes):
                if not piece:
                    self._pieces.pop(0)
                    continue
                out, self._pieces[0] = piece[:size], piece[size:]
                return out
            out = piece.read(min(size, self._left)) if self._left else b""
            if not out:
                if self._left:
                    raise BlobStoreUnavailable("the stored weights ended early", code="blob_corrupt")
                self._pieces.pop(0)
                continue
            self._left -= len(out)
            return out
        return b""

    def close(self) -> None:
        try:
            self._blob.close()
        finally:
            super().close()
