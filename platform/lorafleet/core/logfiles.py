"""Size-capped log files for the processes `lorafleet up` starts in the background.

A process's stdout and stderr (and those of everything it starts: a worker's vLLM engine writes
to the same descriptors) go into a pipe; ``python -m lorafleet.core.logfiles PATH MAX_BYTES BACKUPS``
reads the pipe and writes ``PATH``, rotating it to ``PATH.1`` … ``PATH.BACKUPS`` before it would
pass ``MAX_BYTES``. So no file is larger than ``MAX_BYTES`` and the whole log stays under
``MAX_BYTES × (BACKUPS + 1)``. A separate process rather than a logging handler inside the service,
because output that does not go through Python's logging (vLLM's engine processes, a crash's
traceback, native libraries) must be bounded too.

The writer never stops reading while a writer is attached: if it stopped, the service would block
on a full pipe or die of a broken one. A write that fails (disk full) drops that chunk, and the
next one tries again. It ends when every writer has closed the pipe.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

READ_CHUNK = 64 * 1024


class RotatingWriter:
    """Appends bytes to ``path``, rotating before the file would pass ``max_bytes``.

    Rotation happens at a line boundary when the chunk has one (a line longer than a whole file is
    split); ``backups`` older files are kept (``path.1`` is the newest of them).
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be positive and backups not negative")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._size = 0

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def rotate(self) -> None:
        self.close()
        for index in range(self.backups, 0, -1):
            older = self._numbered(index - 1)
            if older.exists():
                os.replace(older, self._numbered(index))
        if self.backups == 0:
            self.path.unlink(missing_ok=True)

    def _numbered(self, index: int) -> Path:
        return self.path if index == 0 else self.path.with_name(f"{self.path.name}.{index}")

    def write(self, data: bytes) -> None:
        while data:
            fd = self._open()
            room = self.max_bytes - self._size
            if len(data) <= room:
                self._write(fd, data)
                return
            # What fits, up to its last complete line; a fresh file takes what fits even mid-line.
            cut = data.rfind(b"\n", 0, room) + 1 if room > 0 else 0
            if cut == 0 and self._size == 0:
                cut = room
            if cut:
                self._write(fd, data[:cut])
                data = data[cut:]
            self.rotate()

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            self._size += written
            view = view[written:]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._size = 0


def pump(source: int, writer: RotatingWriter) -> None:
    """Copy ``source`` into ``writer`` until end of file, whatever the destination does."""
    while chunk := os.read(source, READ_CHUNK):
        try:
            writer.write(chunk)
        except OSError:
            writer.close()  # disk full or the folder gone: drop this chunk, reopen for the next
    writer.close()


def main(argv: list[str]) -> None:
    path, max_bytes, backups = Path(argv[0]), int(argv[1]), int(argv[2])
    pump(sys.stdin.fileno(), RotatingWriter(path, max_bytes, backups))


if __name__ == "__main__":
    main(sys.argv[1:])
