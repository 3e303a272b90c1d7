"""Named SQL queries from ``sql/*.sql``, loaded once and called by name.

A file holds blocks that start with ``-- name: <query_name>``; parameters are ``$n``.
"""

from __future__ import annotations

import re
from pathlib import Path

_QUERY_DIR = Path(__file__).with_name("sql")
_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


class Queries:
    def __init__(self, directory: Path) -> None:
        self._sql: dict[str, str] = {}
        for path in sorted(directory.glob("*.sql")):
            parts = _NAME_LINE.split(path.read_text())
            for name, body in zip(parts[1::2], parts[2::2], strict=True):
                if name in self._sql:
                    raise ValueError(f"query {name!r} defined twice ({path.name})")
                self._sql[name] = body.strip().rstrip(";")

    def __getattr__(self, name: str) -> str:
        try:
            return self._sql[name]
        except KeyError:
            raise AttributeError(f"no SQL query named {name!r}") from None

    def items(self) -> list[tuple[str, str]]:
        return list(self._sql.items())


queries = Queries(_QUERY_DIR)
