"""Logs of the processes `lorafleet up` starts are size-capped with rotation, through a pipe like theirs."""

from __future__ import annotations

import os
import subprocess
import sys

from lorafleet.core.logfiles import RotatingWriter


def _files(folder, name="gateway.log"):
    return sorted(path for path in folder.iterdir() if path.name.startswith(name))


def test_bytes_stay_bounded_however_much_is_written(tmp_path):
    writer = RotatingWriter(tmp_path / "gateway.log", max_bytes=1000, backups=3)
    lines = [f'{{"event": "request", "n": {n}}}\n'.encode() for n in range(5000)]  # ~150 KB: 150 × the cap
    for line in lines:
        writer.write(line)
    writer.close()
    files = _files(tmp_path)
    assert [path.name for path in files] == ["gateway.log", "gateway.log.1", "gateway.log.2", "gateway.log.3"]
    assert all(path.stat().st_size <= 1000 for path in files)
    assert sum(path.stat().st_size for path in files) <= 1000 * 4
    # Rotated at line boundaries, newest last: the current file ends with the last line written, and
    # the kept files hold the most recent lines in order, none cut.
    kept = b"".join(path.read_bytes() for path in reversed(files))
    assert kept.endswith(lines[-1]) and kept.splitlines(keepends=True) == lines[-len(kept.splitlines()):]


def test_a_line_longer_than_a_file_is_split_not_lost(tmp_path):
    writer = RotatingWriter(tmp_path / "worker.log", max_bytes=100, backups=5)
    writer.write(b"x" * 250 + b"\n")
    writer.close()
    files = _files(tmp_path, "worker.log")
    assert all(path.stat().st_size <= 100 for path in files)
    assert b"".join(path.read_bytes() for path in reversed(files)) == b"x" * 250 + b"\n"


def test_no_backups_keeps_only_the_current_file(tmp_path):
    writer = RotatingWriter(tmp_path / "gateway.log", max_bytes=64, backups=0)
    for n in range(100):
        writer.write(f"line {n}\n".encode())
    writer.close()
    assert [path.name for path in _files(tmp_path)] == ["gateway.log"]
    assert (tmp_path / "gateway.log").read_bytes().endswith(b"line 99\n")


def test_the_writer_process_bounds_a_childs_output_and_ends_with_it(tmp_path):
    """As `lorafleet up` wires it: a child writes to a pipe, its own child too; the writer rotates."""
    log = tmp_path / "logs" / "worker.log"
    read_end, write_end = os.pipe()
    writer = subprocess.Popen([sys.executable, "-m", "lorafleet.core.logfiles", str(log), "4096", "2"], stdin=read_end)
    # The child, and a grandchild holding the same descriptor (as vLLM's engine does), each write 200 KB.
    script = ("import os, subprocess, sys\n"
              "child = subprocess.Popen([sys.executable, '-c', 'print(\"g\" * 99, flush=True) or [print(\"g\" * 99) for _ in range(2000)]'])\n"
              "for n in range(2000): print(f'{n:>98}', flush=n % 100 == 0)\n"
              "child.wait()\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=write_end, stderr=subprocess.STDOUT)
    os.close(read_end)
    os.close(write_end)
    assert child.wait(60) == 0
    assert writer.wait(60) == 0  # the pipe's end, once every writer closed it, ends the writer
    files = _files(log.parent, "worker.log")
    assert [path.name for path in files] == ["worker.log", "worker.log.1", "worker.log.2"]
    assert all(path.stat().st_size <= 4096 for path in files)
