"""The worker's local disk cache of adapters, bounded in bytes, least recently used out first.

Each adapter lives in ``<root>/<adp_id>/`` as the two files vLLM loads. A fetch writes into a
temporary folder, checks the weights' sha256, then renames: a half-fetched adapter is never
visible. Before an adapter's files are deleted, the ``unload`` callback removes it from vLLM, so
the engine never holds a name whose files are gone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from lorafleet.adapters.blobstore import BlobStore
from lorafleet.adapters.validation import sha256_file

EVICTION_GRACE_SECONDS = 2.0
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class AdapterIntegrityError(RuntimeError):
    pass


class AdapterDiskCache:
    def __init__(self, root: Path, max_bytes: int, blobs: BlobStore) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.blobs = blobs
        root.mkdir(parents=True, exist_ok=True)

    def folder(self, adapter_id: str) -> Path:
        return self.root / adapter_id

    def ensure(self, adapter_id: str, sha256: str, config: dict[str, Any]) -> tuple[Path, bool]:
        """The adapter's folder, fetched if absent; (folder, was_cached)."""
        folder = self.folder(adapter_id)
        if (folder / WEIGHTS_FILE).exists():
            os.utime(folder)  # recency for LRU
            return folder, True
        staging = self.root / f".{adapter_id}.{os.getpid()}.{time.monotonic_ns()}"
        staging.mkdir()
        try:
            self.blobs.fetch(sha256, staging / WEIGHTS_FILE)
            if sha256_file(staging / WEIGHTS_FILE) != sha256:
                raise AdapterIntegrityError(f"{adapter_id}: weights do not match sha256 {sha256}")
            (staging / CONFIG_FILE).write_text(json.dumps(config))
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder, False

    def touch(self, adapter_ids: list[str]) -> None:
        """Mark adapters as just used (their requests are running), so eviction picks colder ones."""
        for adapter_id in adapter_ids:
            try:
                os.utime(self.folder(adapter_id))
            except FileNotFoundError:
                continue

    def adapter_ids(self) -> list[str]:
        """Adapters whose files are on disk (fetched completely: staging folders are hidden)."""
        return sorted(folder.name for folder in self.root.glob("adp_*"))

    def size(self) -> int:
        return self.usage()[1]

    def usage(self) -> tuple[int, int]:
        """(adapters, bytes) on disk."""
        folders = list(self.root.glob("adp_*"))
        return len(folders), sum(_bytes(folder) for folder in folders)

    def over_budget(self, keep: set[str], grace_seconds: float = EVICTION_GRACE_SECONDS) -> list[str]:
        """Least recently used adapters whose removal brings the cache within budget.

        Never those in ``keep`` (being resolved) nor any used in the last ``grace_seconds``: vLLM
        looks a resolved adapter up again by name while it prepares the request, and an unload in
        between would turn that request into a 404. So the cache may sit above its bound by the
        adapters used within the grace period. The caller serialises eviction; a folder vanishing
        meanwhile is simply skipped.
        """
        folders = []
        recent = time.time() - grace_seconds
        for folder in self.root.glob("adp_*"):
            try:
                mtime = folder.stat().st_mtime
            except FileNotFoundError:
                continue
            if folder.name not in keep and mtime < recent:
                folders.append((mtime, folder))
        total = self.size()
        victims = []
        for _, folder in sorted(folders):
            if total <= self.max_bytes:
                break
            total -= _bytes(folder)
            victims.append(folder.name)
        return victims

    def remove(self, adapter_id: str) -> None:
        """Delete an adapter's files; the caller has unloaded it from vLLM first."""
        shutil.rmtree(self.folder(adapter_id), ignore_errors=True)


def _bytes(folder: Path) -> int:
    total = 0
    try:
        for file in folder.iterdir():
            total += file.stat().st_size
    except FileNotFoundError:
        pass
    return total
