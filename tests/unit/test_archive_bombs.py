"""Archives built to exhaust the gateway rather than to carry an adapter: each is refused early,
in bounded memory, with a 400 that names the archive and carries at most ~100 characters of any
name found inside it."""

from __future__ import annotations

import io
import struct
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from lorafleet.adapters.archive import extract
from lorafleet.adapters.validation import AdapterInvalid

from tests.adapter_factory import MiB, header_bomb, lazy_gzip, pax_record, tar_block

BUDGET = 256 * MiB  # the gateway's default: the bombs below fit in it on paper


def _refusal(tmp_path: Path, archive: Path, name: str | None = None, *, max_files: int = 16,
             max_bytes: int = BUDGET, peak_limit: int = 8 * MiB) -> AdapterInvalid:
    """The AdapterInvalid that extracting ``archive`` raises; also checks the memory it took."""
    name = name or archive.name
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    tracemalloc.start()
    try:
        with pytest.raises(AdapterInvalid) as caught:
            extract(archive, name, out, max_files=max_files, max_bytes=max_bytes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    error = caught.value
    assert peak < peak_limit, f"refusing {name} took {peak} bytes of memory"
    assert error.status_code == 400 and error.code == "invalid_adapter"
    assert error.param == name[:99] + "…" if len(name) > 100 else error.param == name
    assert error.message.startswith(f"{error.param}: "), error.message
    return error


def _tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, "w:gz", format=fmt) as bundle:
        for info, data in members:
            bundle.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"{}", **pax: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.pax_headers = pax
    return info, data


# ---- headers read whole by tarfile ---------------------------------------------------------------

@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                                  tarfile.XGLTYPE])
def test_an_extended_header_declaring_512_mib_is_refused_before_it_is_read(tmp_path, kind):
    bomb = header_bomb(tmp_path / "bomb.tar.gz", kind)
    assert bomb.stat().st_size < 1 * MiB
    error = _refusal(tmp_path, bomb)
    assert "extended header" in error.message and str(512 * MiB) in error.message


def test_a_chain_of_pax_headers_is_cut_short(tmp_path):
    # tarfile recurses once per chained header: 2,000 of them ended in RecursionError (a 500).
    pax = pax_record("comment", "x" * 400)
    chain = b"".join(tar_block("././@PaxHeader", len(pax), tarfile.XHDTYPE) + pax + bytes(-len(pax) % 512)
                     for _ in range(2000))
    bomb = lazy_gzip(tmp_path / "chain.tar.gz", [chain, tar_block("adapter_config.json"), bytes(1024)])
    assert "extended headers in a row" in _refusal(tmp_path, bomb).message


def test_ten_thousand_empty_folders_are_refused(tmp_path):
    folders = [(tarfile.TarInfo(f"d{i}/"), None) for i in range(10_000)]
    for info, _ in folders:
        info.type = tarfile.DIRTYPE
    bomb = _tar_gz(tmp_path / "folders.tar.gz", folders)
    assert "more than 8 folders" in _refusal(tmp_path, bomb).message


def test_headers_count_against_the_byte_budget(tmp_path):
    # 40 files of 1 byte each need 40 headers and paddings: ~40 KB decompressed, not 40 bytes.
    archive = _tar_gz(tmp_path / "headers.tar", [_file(f"f{i}", b"x") for i in range(40)], fmt=tarfile.GNU_FORMAT)
    error = _refusal(tmp_path, archive, max_files=100, max_bytes=10_000)
    assert "more than 10000 bytes once decompressed (headers included)" in error.message


def test_a_member_declaring_more_than_the_budget_is_refused_before_reading(tmp_path):
    archive = lazy_gzip(tmp_path / "huge.tar.gz", [tar_block("adapter_model.safetensors", 1 << 40), bytes(4096)])
    assert "more than 1000000 bytes" in _refusal(tmp_path, archive, max_bytes=1_000_000).message


# ---- compressions and members that are not files -------------------------------------------------

@pytest.mark.parametrize(("mode", "name", "compression"), [
    ("w:bz2", "a.tar.bz2", "bzip2"), ("w:xz", "a.tar.xz", "xz"), ("w:xz", "disguised.tar.gz", "xz"),
])
def test_bzip2_and_xz_tars_are_refused(tmp_path, mode, name, compression):
    with tarfile.open(tmp_path / name, mode) as bundle:
        info, data = _file("adapter_config.json")
        bundle.addfile(info, io.BytesIO(data))
    error = _refusal(tmp_path, tmp_path / name)
    assert f"{compression} compression is not accepted" in error.message


@pytest.mark.parametrize(("method", "label"), [(zipfile.ZIP_LZMA, "lzma"), (zipfile.ZIP_BZIP2, "bzip2")])
def test_zip_members_compressed_with_lzma_or_bzip2_are_refused(tmp_path, method, label):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", compression=method) as bundle:
        bundle.writestr("adapter_config.json", "{}")
    assert f"compressed with {label}" in _refusal(tmp_path, archive).message


def test_sparse_members_are_refused(tmp_path):
    old_gnu = lazy_gzip(tmp_path / "old.tar.gz", [tar_block("adapter_model.safetensors", 0, tarfile.GNUTYPE_SPARSE),
                                                  bytes(1024)])
    assert "is a sparse file" in _refusal(tmp_path, old_gnu).message
    sparse_map = b"1\n0\n512\n".ljust(512, b"\0")
    pax_one_zero = _tar_gz(tmp_path / "pax.tar.gz", [_file(
        "GNUSparseFile.0/adapter_model.safetensors", sparse_map + b"x" * 512, **{
            "GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "adapter_model.safetensors",
            "GNU.sparse.realsize": str(1 << 40)})])
    assert "is a sparse file" in _refusal(tmp_path, pax_one_zero).message


# ---- names ---------------------------------------------------------------------------------------

def test_names_longer_than_any_real_name_are_refused_and_clipped(tmp_path):
    long_part = _tar_gz(tmp_path / "part.tar.gz", [_file("n" * 300)])
    error = _refusal(tmp_path, long_part)
    assert "a name longer than 255 bytes" in error.message
    assert "n" * 101 not in error.message and len(error.message) < 250
    long_path = _tar_gz(tmp_path / "path.tar.gz", [_file("p" * 40 + "/" + "q" * 200, path="z" * 60_000)])
    error = _refusal(tmp_path, long_path)
    assert "a name longer than 4096 bytes" in error.message and "z" * 101 not in error.message


def test_a_long_name_is_clipped_in_every_message(tmp_path):
    link = tarfile.TarInfo("l" * 4000)
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    error = _refusal(tmp_path, _tar_gz(tmp_path / "link.tar.gz", [(link, None)], fmt=tarfile.GNU_FORMAT))
    assert "is a link or special file" in error.message
    assert "l" * 101 not in error.message and len(error.message) < 250


def test_a_long_archive_name_is_clipped_too(tmp_path):
    archive = tmp_path / "junk.tar.gz"
    archive.write_bytes(b"not an archive at all")
    name = "a" * 5000 + ".tar.gz"
    error = _refusal(tmp_path, archive, name)
    assert "not a readable archive" in error.message and len(error.param) == 100 and len(error.message) < 250


def test_control_characters_in_a_name_are_refused(tmp_path):
    archive = _tar_gz(tmp_path / "nul.tar.gz", [_file("adapter_config.json", path="adapter_config.json\0.txt")])
    assert "control characters" in _refusal(tmp_path, archive).message


# ---- zip directories -----------------------------------------------------------------------------

def _zip_with_one_file(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("adapter_config.json", "{}")
    return path.read_bytes()


def test_a_zip_whose_directory_declares_ten_million_entries_is_refused(tmp_path):
    data = _zip_with_one_file(tmp_path / "plain.zip")
    eocd = data.rindex(b"PK\x05\x06")
    _, _, _, _, _, directory_size, directory_offset, _ = struct.unpack("<4s4H2LH", data[eocd:eocd + 22])
    zip64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 10_000_000, 10_000_000,
                        directory_size, directory_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, eocd, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, directory_size, directory_offset, 0)
    archive = tmp_path / "millions.zip"
    archive.write_bytes(data[:eocd] + zip64 + locator + end)
    assert "declares 10000000 entries" in _refusal(tmp_path, archive).message


def test_a_zip_directory_larger_than_any_adapters_is_refused(tmp_path):
    archive = tmp_path / "wide.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for index in range(4):  # 4 entries, 64 KB of comment each: a directory of ~260 KB
            info = zipfile.ZipInfo(f"file{index}")
            info.comment = b"c" * 65_000
            bundle.writestr(info, "{}")
    error = _refusal(tmp_path, archive)
    assert "the zip directory declares" in error.message and "at most 196608" in error.message


def test_sixty_thousand_zip_entries_are_refused_before_zipfile_lists_them(tmp_path):
    local, central, offset = [], [], 0
    for index in range(60_000):
        name = f"{index:06d}".encode()
        header = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0) + name
        central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name),
                                   0, 0, 0, 0, 0, offset) + name)
        local.append(header)
        offset += len(header)
    directory = b"".join(central)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 60_000, 60_000, len(directory), offset, 0)
    archive = tmp_path / "entries.zip"
    archive.write_bytes(b"".join(local) + directory + end)
    # zipfile would build 60,000 ZipInfo objects (tens of MB) before anyone counted them.
    assert "declares 60000 entries" in _refusal(tmp_path, archive, peak_limit=2 * MiB).message


# ---- what still works ----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_real_archives_with_long_folder_names_extract(tmp_path, fmt):
    folder = "my-adapter-" + "x" * (80 if fmt == tarfile.USTAR_FORMAT else 140)
    folder_info = tarfile.TarInfo(folder)
    folder_info.type = tarfile.DIRTYPE
    archive = _tar_gz(tmp_path / "a.tar.gz", [(folder_info, None), _file(f"{folder}/adapter_config.json", b"{}"),
                                              _file(f"{folder}/adapter_model.safetensors", b"w" * 5000)], fmt=fmt)
    out = tmp_path / "out"
    out.mkdir()
    files = extract(archive, "a.tar.gz", out, max_files=16, max_bytes=BUDGET)
    assert {name: path.read_bytes() for name, path in files.items()} == {
        "adapter_config.json": b"{}", "adapter_model.safetensors": b"w" * 5000}
