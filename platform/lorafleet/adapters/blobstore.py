"""Content-addressed storage of adapter weights: one object per sha256.

``LocalBlobStore`` keeps them in a folder (the default, and what one machine needs). Production
fleets put an S3-compatible bucket behind the same three methods; that implementation is not
written yet (no S3-compatible server installs from this machine's package registries to test it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol


class BlobStore(Protocol):
    def put(self, sha256: str, source: Path) -> None: ...
    def fetch(self, sha256: str, target: Path) -> None: ...
    def delete(self, sha256: str) -> None: ...


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, sha256: str, source: Path) -> None:
        final = self.path(sha256)
        if final.exists():
            return  # same bytes, already stored
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f".{sha256}.{os.getpid()}.partial")
        shutil.copyfile(source, partial)
        os.replace(partial, final)  # atomic: readers never see half a file

    def fetch(self, sha256: str, target: Path) -> None:
        shutil.copyfile(self.path(sha256), target)

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)
