"""Unpack an uploaded adapter archive under a budget: ``.tar.gz``/``.tgz``/``.tar`` or ``.zip``.

The budget counts every byte the archive decompresses to, headers included: tar headers, GNU
long names, pax records and padding as well as members' data, and a zip's central directory. It
refuses the moment the count passes ``max_bytes`` and before reading a member whose declared size
would, so neither a lying header (a zip bomb) nor a huge honest one gets through.

Tar headers are parsed here, not by :mod:`tarfile`, which reads a GNU long-name or pax header into
memory whole whatever size it declares (a 1 MB ``.tar.gz`` can declare a 512 MiB name), recurses
once per chained extended header, and builds sparse maps of any length. Here a long name is at
most :data:`MAX_PATH_BYTES`, a pax header :data:`MAX_PAX_BYTES`, at most
:data:`MAX_EXTENDED_HEADERS` extended headers precede a member, and sparse members are refused.
A zip's end-of-central-directory record (and its ZIP64 version) is read and checked — entry count
and central directory size — before :mod:`zipfile` builds its list of members.

Only gzip-compressed or plain tar, and stored or deflated zip members: bzip2, xz, lzma and zstd
are refused (their decompressors' memory and time are not budgeted here).

Refused besides: absolute paths, ``..``, links, device files and anything but regular files and
folders, names with control characters, names longer than any real one (a part over 255 bytes, a
path over 4096), encrypted zip members, more than ``max_files`` files and more than
:data:`MAX_FOLDERS` folders. Files may sit at the top or inside one folder
(``my-adapter/adapter_config.json``); the folder is dropped. Every refusal is an
:class:`AdapterInvalid` naming the archive (``param``) and carrying at most ~100 characters of any
name found inside it.
"""

from __future__ import annotations

import gzip
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from lorafleet.adapters.validation import AdapterInvalid, clip, shown

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# Recognised as archives so the answer names the compression instead of "unexpected file".
REFUSED_SUFFIXES = (".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz", ".tar.lzma", ".tlz", ".tar.zst", ".tzst")
MAX_FOLDERS = 8  # an adapter needs one (two with "./"); folder entries are counted like files
MAX_PATH_BYTES = 4096  # PATH_MAX: no real path is longer; also the cap on a GNU long-name header
MAX_NAME_BYTES = 255  # NAME_MAX: no real file or folder name is longer
MAX_PAX_BYTES = 64 * 1024  # pax records: a path, times, a few extended attributes
MAX_EXTENDED_HEADERS = 4  # before one member: pax global, pax, GNU long name, GNU long link
MAX_ZIP_ENTRY_BYTES = 8192  # central directory bytes per entry allowed on average (46 + name + extras)
_CHUNK = 1 << 20
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_COMPRESSIONS = ((b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"\x5d\x00\x00", "lzma"))
_ZIP_METHODS = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


def is_archive(filename: str) -> bool:
    return filename.lower().endswith(ARCHIVE_SUFFIXES + REFUSED_SUFFIXES)


def check_parts(parts: list[tuple[str, Path]], *, max_files: int, max_bytes: int) -> None:
    """What can be refused without opening a file: nothing sent, too many bytes, an archive among files."""
    if not parts:
        raise AdapterInvalid("no files: send adapter_config.json and adapter_model.safetensors, or one archive",
                             param="file")
    uploaded = sum(path.stat().st_size for _, path in parts)
    if uploaded > max_bytes:
        raise AdapterInvalid(f"the upload is {uploaded} bytes, more than the {max_bytes} accepted", param="file")
    if len(parts) > 1 and any(is_archive(name) for name, _ in parts):
        raise AdapterInvalid("send one archive, or the files themselves, not both", param="file")
    if len(parts) > max_files:
        raise AdapterInvalid(f"more than {max_files} files", param="file")


def adapter_files(parts: list[tuple[str, Path]], workdir: Path, *, max_files: int, max_bytes: int) -> dict[str, Path]:
    """The adapter's files by name: the uploaded parts themselves, or the contents of one archive part.

    ``parts`` are (client file name, local path); an archive is unpacked into a new folder in
    ``workdir``. At most ``max_bytes`` uploaded, and as many once decompressed.
    """
    check_parts(parts, max_files=max_files, max_bytes=max_bytes)
    if is_archive(parts[0][0]):
        name, path = parts[0]
        target = Path(tempfile.mkdtemp(prefix="extracted-", dir=workdir))
        return extract(path, name, target, max_files=max_files, max_bytes=max_bytes)
    files: dict[str, Path] = {}
    for name, path in parts:
        if name in files:
            raise AdapterInvalid(f"{clip(name)} was sent twice", param=clip(name))
        files[name] = path
    return files


def extract(archive_path: Path, filename: str, into: Path, *, max_files: int, max_bytes: int) -> dict[str, Path]:
    """Unpack ``archive_path`` (called ``filename`` by the client) flat into ``into``: {file name: path}."""
    budget = _Budget(clip(filename), max_files, max_bytes)
    if filename.lower().endswith(".zip"):
        return _extract_zip(archive_path, into, budget)
    return _extract_tar(archive_path, into, budget)


class _Budget:
    def __init__(self, label: str, max_files: int, max_bytes: int) -> None:
        self.label, self.max_files, self.max_bytes = label, max_files, max_bytes
        self.files = 0
        self.folders = 0
        self.bytes = 0

    def fail(self, message: str) -> AdapterInvalid:
        return AdapterInvalid(f"{self.label}: {message}", param=self.label)

    def unreadable(self, reason: str) -> AdapterInvalid:
        return self.fail(f"not a readable archive ({clip(reason)})")

    def count(self, size: int) -> None:
        self.bytes += size
        if self.bytes > self.max_bytes:
            raise self.fail(f"more than {self.max_bytes} bytes once decompressed (headers included)")

    def expect(self, size: int) -> None:
        """Refuse a declared size that cannot fit before reading any of it."""
        if self.bytes + size > self.max_bytes:
            raise self.fail(f"more than {self.max_bytes} bytes once decompressed (headers included)")

    def add_file(self) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise self.fail(f"more than {self.max_files} files")

    def add_folder(self) -> None:
        self.folders += 1
        if self.folders > MAX_FOLDERS:
            raise self.fail(f"more than {MAX_FOLDERS} folders")


def _member_name(budget: _Budget, raw: str) -> str | None:
    """The file's name inside the adapter folder; None for folder entries."""
    if len(raw.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise budget.fail(f"a name longer than {MAX_PATH_BYTES} bytes ({shown(raw)})")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in raw):
        raise budget.fail(f"{shown(raw)} has control characters in its name")
    path = PurePosixPath(raw.replace("\\", "/"))
    if raw.startswith(("/", "\\")) or path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise budget.fail(f"absolute path {shown(raw)} in the archive")
    parts = [part for part in path.parts if part not in ("", ".")]
    if ".." in parts:
        raise budget.fail(f"path {shown(raw)} climbs out of the archive")
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in parts):
        raise budget.fail(f"a name longer than {MAX_NAME_BYTES} bytes ({shown(raw)})")
    if raw.endswith(("/", "\\")) or not parts:
        return None
    if len(parts) > 2:
        raise budget.fail(f"{shown(raw)} is nested too deep; put the files at the top or in one folder")
    return parts[-1]


def _write(read: Callable[[int], bytes], target: Path) -> None:
    with open(target, "wb") as out:
        while block := read(_CHUNK):
            out.write(block)


# ---- tar ------------------------------------------------------------------------------------

class _TarStream:
    """The archive's decompressed bytes; every byte read is counted against the budget."""

    def __init__(self, source: IO[bytes], budget: _Budget) -> None:
        self._source, self._budget = source, budget

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the stream."""
        chunks, wanted = [], size
        while wanted:
            try:
                chunk = self._source.read(wanted)
            except (OSError, EOFError, zlib.error) as exc:
                raise self._budget.unreadable(str(exc) or type(exc).__name__) from None
            if not chunk:
                break
            self._budget.count(len(chunk))
            chunks.append(chunk)
            wanted -= len(chunk)
        return b"".join(chunks)

    def exactly(self, size: int) -> bytes:
        data = self.read(size)
        if len(data) != size:
            raise self._budget.unreadable("truncated")
        return data

    def skip(self, size: int) -> None:
        while size:
            size -= len(self.exactly(min(size, _CHUNK)))


@dataclass
class _Header:
    kind: bytes
    name: str
    size: int


@dataclass
class _Entry:
    kind: str  # "file", "folder", "link", "special"
    name: str
    size: int
    stream: _TarStream
    left: int = 0

    def read(self, size: int) -> bytes:
        data = self.stream.exactly(min(size, self.left))
        self.left -= len(data)
        return data


_FILE_TYPES = (b"0", b"\x00", b"7")  # regular, old regular, contiguous
_LINK_TYPES = (b"1", b"2")
_SPECIAL_TYPES = (b"3", b"4", b"6")
_GNU_LONG_TYPES = (b"L", b"K")  # GNU long name, long link name
_PAX_TYPES = (b"x", b"X", b"g")  # pax header, Solaris pax header, pax global header


def _extract_tar(archive_path: Path, into: Path, budget: _Budget) -> dict[str, Path]:
    files: dict[str, Path] = {}
    with open(archive_path, "rb") as raw:
        stream = _TarStream(_decompressed(raw, budget), budget)
        for entry in _tar_entries(stream, budget):
            if entry.kind in ("link", "special"):
                raise budget.fail(f"{shown(entry.name)} is a link or special file")
            name = _member_name(budget, entry.name)
            if entry.kind == "folder" or name is None:
                if entry.size:
                    raise budget.unreadable(f"folder entry {shown(entry.name)} carries data")
                budget.add_folder()
                continue
            budget.add_file()
            if name in files:
                raise budget.fail(f"{clip(name)} appears twice")
            budget.expect(entry.size)
            files[name] = into / name
            _write(entry.read, files[name])
    return files


def _decompressed(raw: IO[bytes], budget: _Budget) -> IO[bytes]:
    """The tar stream inside ``raw``: gunzipped, or ``raw`` itself; other compressions refused."""
    head = raw.read(_BLOCK)
    raw.seek(0)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head == _ZERO_BLOCK or (len(head) == _BLOCK and _checksum_ok(head)):
        return raw
    for magic, compression in _COMPRESSIONS:
        if head.startswith(magic):
            raise budget.fail(f"{compression} compression is not accepted; send a .tar.gz, .tar or .zip")
    raise budget.unreadable("not a tar, tar.gz or zip file")


def _tar_entries(stream: _TarStream, budget: _Budget) -> Iterator[_Entry]:
    """Members in order; extended headers applied. A member's unread data is skipped after it."""
    global_pax: dict[str, str] = {}
    pax: dict[str, str] = {}
    long_name: str | None = None
    chained = 0
    while True:
        block = stream.read(_BLOCK)
        if not block or block == _ZERO_BLOCK:  # the end-of-archive marker, or a stream ending without one
            if chained:
                raise budget.unreadable("ends after an extended header")
            return
        if len(block) != _BLOCK:
            raise budget.unreadable("truncated")
        header = _parse_header(block, budget)
        if header.kind in _GNU_LONG_TYPES or header.kind in _PAX_TYPES:
            chained += 1
            if chained > MAX_EXTENDED_HEADERS:
                raise budget.fail(f"more than {MAX_EXTENDED_HEADERS} extended headers in a row")
            limit = MAX_PATH_BYTES if header.kind in _GNU_LONG_TYPES else MAX_PAX_BYTES
            if header.size > limit:
                raise budget.fail(f"an extended header (a long name or pax record) of {header.size} bytes; "
                                  f"no real file needs more than {limit}")
            payload = stream.exactly(header.size)
            stream.skip(-header.size % _BLOCK)
            if header.kind == b"L":
                long_name = _text(payload)
            elif header.kind == b"g":
                global_pax.update(_pax_records(payload, budget))
            elif header.kind != b"K":  # a long link name: links are refused anyway
                pax.update(_pax_records(payload, budget))
            continue
        chained = 0
        fields = {**global_pax, **pax}
        name = fields.get("path", long_name if long_name is not None else header.name)
        pax, long_name = {}, None
        if header.kind == b"S" or any(key.startswith("GNU.sparse.") for key in fields):
            raise budget.fail(f"{shown(name)} is a sparse file")
        size = header.size
        if "size" in fields:
            value = fields["size"]
            if not value.isascii() or not value.isdigit() or len(value) > 20:
                raise budget.unreadable("bad size in a pax header")
            size = int(value)
        if header.kind in _FILE_TYPES:
            kind = "folder" if header.kind == b"\x00" and name.endswith("/") else "file"
        elif header.kind == b"5":
            kind = "folder"
        elif header.kind in _LINK_TYPES or header.kind in _SPECIAL_TYPES:
            kind = "link" if header.kind in _LINK_TYPES else "special"
        else:
            raise budget.fail(f"{shown(name)} is of tar type {shown(header.kind)}, not a file or folder")
        entry = _Entry(kind, name, size, stream, left=size if kind == "file" else 0)
        yield entry
        if kind == "file":
            stream.skip(entry.left + (-size % _BLOCK))


def _parse_header(block: bytes, budget: _Budget) -> _Header:
    if not _checksum_ok(block):
        raise budget.unreadable("bad tar header checksum")
    name = _text(block[0:100])
    if block[257:263] == b"ustar\x00":  # POSIX ustar: a prefix extends the name (GNU's magic differs)
        prefix = _text(block[345:500])
        if prefix:
            name = f"{prefix}/{name}"
    return _Header(kind=block[156:157], name=name, size=_number(block[124:136], budget))


def _checksum_ok(block: bytes) -> bool:
    stored = block[148:156].split(b"\x00", 1)[0].strip()
    if not stored or not all(48 <= byte <= 55 for byte in stored):
        return False
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = sum(struct.unpack("148b", block[:148])) + 8 * 0x20 + sum(struct.unpack("356b", block[156:]))
    return int(stored, 8) in (unsigned, signed)


def _number(field: bytes, budget: _Budget) -> int:
    if field[0] & 0x80:  # GNU base-256; 0xff (negative) is nonsense for a size
        if field[0] != 0x80:
            raise budget.unreadable("negative number in a tar header")
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\x00", 1)[0].strip()
    if digits and not all(48 <= byte <= 55 for byte in digits):
        raise budget.unreadable("bad number in a tar header")
    return int(digits, 8) if digits else 0


def _text(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "replace")


def _pax_records(payload: bytes, budget: _Budget) -> dict[str, str]:
    """``"<length> <key>=<value>\\n"`` records, parsed in one linear pass."""
    records: dict[str, str] = {}
    position = 0
    while position < len(payload) and payload[position] != 0:
        space = payload.find(b" ", position, position + 21)
        digits = payload[position:space]
        if space < 0 or not digits or not all(48 <= byte <= 57 for byte in digits):
            raise budget.unreadable("bad pax record")
        end = position + int(digits)
        if end <= space + 1 or end > len(payload) or payload[end - 1] != 0x0A:
            raise budget.unreadable("bad pax record")
        key, equals, value = payload[space + 1:end - 1].partition(b"=")
        if not equals:
            raise budget.unreadable("bad pax record")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        position = end
    return records


# ---- zip ------------------------------------------------------------------------------------

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


def _zip_directory(archive_path: Path, budget: _Budget, max_entries: int) -> int:
    """The central directory's size, after checking its declared size and entry count.

    Finds the record exactly as zipfile's ``_EndRecData`` does (a record at the very end without a
    comment, else the last signature in the final 64 KiB, then a ZIP64 record just before it), so
    the numbers checked are the ones zipfile will act on when it reads the directory.
    """
    with open(archive_path, "rb") as handle:
        size = handle.seek(0, 2)
        search_from = max(size - (1 << 16) - _EOCD.size, 0)
        start = max(search_from - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size, 0)
        handle.seek(start)
        tail = handle.read()
    if len(tail) >= _EOCD.size and tail[-_EOCD.size:-_EOCD.size + 4] == b"PK\x05\x06" and tail[-2:] == b"\x00\x00":
        at = len(tail) - _EOCD.size
    else:
        at = tail.rfind(b"PK\x05\x06", search_from - start)
        if at < 0 or at + _EOCD.size > len(tail):
            raise budget.unreadable("no zip central directory")
    _, _, _, on_disk, total, directory_size, _, _ = _EOCD.unpack_from(tail, at)
    locator = at - _ZIP64_LOCATOR.size
    if locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
        record = locator - _ZIP64_EOCD.size
        if record >= 0 and tail[record:record + 4] == b"PK\x06\x06":
            fields = _ZIP64_EOCD.unpack_from(tail, record)
            on_disk, total, directory_size = fields[6], fields[7], fields[8]
    if max(on_disk, total) > max_entries:
        raise budget.fail(f"the zip directory declares {max(on_disk, total)} entries; "
                          f"an adapter archive has at most {max_entries}")
    if directory_size > max_entries * MAX_ZIP_ENTRY_BYTES:
        raise budget.fail(f"the zip directory declares {directory_size} bytes; "
                          f"an adapter archive's is at most {max_entries * MAX_ZIP_ENTRY_BYTES}")
    return directory_size


def _extract_zip(archive_path: Path, into: Path, budget: _Budget) -> dict[str, Path]:
    max_entries = budget.max_files + MAX_FOLDERS
    budget.count(_zip_directory(archive_path, budget, max_entries))
    try:
        bundle = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error) as exc:
        raise budget.unreadable(str(exc) or type(exc).__name__) from None
    files: dict[str, Path] = {}
    with bundle:
        members = bundle.infolist()
        if len(members) > max_entries:
            raise budget.fail(f"more than {max_entries} entries")
        for info in members:
            mode = (info.external_attr >> 16) & 0o170000
            if mode and mode not in (0o100000, 0o040000):
                raise budget.fail(f"{shown(info.filename)} is a link or special file")
            name = _member_name(budget, info.filename)
            if name is None or info.is_dir():
                budget.add_folder()
                continue
            if info.flag_bits & 0x1:
                raise budget.fail(f"{shown(info.filename)} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                method = _ZIP_METHODS.get(info.compress_type, f"method {info.compress_type}")
                raise budget.fail(f"{shown(info.filename)} is compressed with {method}; "
                                  "only stored or deflated zip members are accepted")
            budget.add_file()
            if name in files:
                raise budget.fail(f"{clip(name)} appears twice")
            budget.expect(info.file_size)
            files[name] = into / name
            try:
                source = bundle.open(info)
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
                raise budget.unreadable(str(exc) or type(exc).__name__) from None
            with source:
                _write(_counted(source, budget), files[name])
    return files


def _counted(source: IO[bytes], budget: _Budget) -> Callable[[int], bytes]:
    """A member's decompressed bytes, counted as they are read: a lying header changes nothing."""
    def read(size: int) -> bytes:
        try:
            data = source.read(size)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise budget.unreadable(str(exc) or type(exc).__name__) from None
        budget.count(len(data))
        return data
    return read
