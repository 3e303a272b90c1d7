"""Unpack an uploaded ``.tar.gz``/``.tgz``/``.tar`` or ``.zip`` adapter safely.

Refused: absolute paths, ``..``, links, device files and anything but regular files and folders,
more than ``max_files`` files, and more than ``max_bytes`` once decompressed — counted on the
bytes actually written, so a lying header (a zip bomb) is stopped all the same. Files may sit at
the top or inside one folder (``my-adapter/adapter_config.json``); the folder is dropped.
"""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from lorafleet.adapters.validation import AdapterInvalid

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
_CHUNK = 1 << 20


def is_archive(filename: str) -> bool:
    return filename.lower().endswith(ARCHIVE_SUFFIXES)


def _member_name(archive: str, raw: str) -> str | None:
    """The file's name inside the adapter folder; None for folder entries."""
    path = PurePosixPath(raw.replace("\\", "/"))
    if raw.startswith(("/", "\\")) or path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise AdapterInvalid(f"{archive}: absolute path {raw!r} in the archive", param=archive)
    parts = [part for part in path.parts if part not in ("", ".")]
    if ".." in parts:
        raise AdapterInvalid(f"{archive}: path {raw!r} climbs out of the archive", param=archive)
    if raw.endswith("/") or not parts:
        return None
    if len(parts) > 2:
        raise AdapterInvalid(f"{archive}: {raw!r} is nested too deep; put the files at the top or in one folder", param=archive)
    return parts[-1]


class _Budget:
    def __init__(self, archive: str, max_files: int, max_bytes: int) -> None:
        self.archive, self.max_files, self.max_bytes = archive, max_files, max_bytes
        self.files = 0
        self.bytes = 0

    def add_file(self) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise AdapterInvalid(f"{self.archive}: more than {self.max_files} files", param=self.archive)

    def copy(self, source: IO[bytes], target: Path) -> None:
        with open(target, "wb") as out:
            while block := source.read(_CHUNK):
                self.bytes += len(block)
                if self.bytes > self.max_bytes:
                    raise AdapterInvalid(
                        f"{self.archive}: more than {self.max_bytes} bytes once decompressed", param=self.archive,
                    )
                out.write(block)


def extract(archive_path: Path, filename: str, into: Path, *, max_files: int, max_bytes: int) -> dict[str, Path]:
    budget = _Budget(filename, max_files, max_bytes)
    files: dict[str, Path] = {}
    for name, opener in _members(archive_path, filename):
        budget.add_file()
        if name in files:
            raise AdapterInvalid(f"{filename}: {name} appears twice", param=filename)
        target = into / name
        with opener() as source:
            budget.copy(source, target)
        files[name] = target
    return files


def _members(archive_path: Path, filename: str) -> Iterator[tuple[str, object]]:
    lower = filename.lower()
    try:
        if lower.endswith(".zip"):
            with zipfile.ZipFile(archive_path) as bundle:
                for info in bundle.infolist():
                    mode = (info.external_attr >> 16) & 0o170000
                    if mode and mode not in (0o100000, 0o040000):
                        raise AdapterInvalid(f"{filename}: {info.filename!r} is a link or special file", param=filename)
                    name = _member_name(filename, info.filename)
                    if name is not None and not info.is_dir():
                        yield name, (lambda info=info: bundle.open(info))
        else:
            with tarfile.open(archive_path, mode="r:*") as bundle:
                for member in bundle:
                    if member.isdir():
                        _member_name(filename, member.name)
                        continue
                    if not member.isfile():
                        raise AdapterInvalid(f"{filename}: {member.name!r} is a link or special file", param=filename)
                    name = _member_name(filename, member.name)
                    if name is not None:
                        yield name, (lambda member=member: bundle.extractfile(member))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise AdapterInvalid(f"{filename}: not a readable archive ({exc})", param=filename) from None
