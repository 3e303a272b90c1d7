"""The repository documents itself: its documents link only inside it, and name files that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ["README.md", "SECURITY.md", "BENCHMARKS.md", "docs/architecture.md", "docs/adapters.md", "infra/README.md"]


def test_markdown_links_stay_inside_the_repository_and_resolve():
    for name in DOCUMENTS:
        document = ROOT / name
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            resolved = (document.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), f"{name} links outside the repository: {target}"
            assert resolved.exists(), f"{name} links to a missing file: {target}"


def test_the_architecture_document_names_only_paths_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:platform|workers|billing|migrations|infra|benchmarks|tests)/[\w./-]+)`", text))
    assert len(named) > 15, "the map names the code it describes"
    missing = sorted(path for path in named if not (ROOT / path.rstrip("/")).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"
