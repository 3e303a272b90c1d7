"""The namespace-package layout (docs/architecture.md), and that it does not shadow the standard library."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stdlib_platform_still_works_from_the_repository_root():
    result = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.system())"], cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_one_namespace_package_across_the_source_roots():
    code = "import lorafleet.gateway, lorafleet.worker, lorafleet.billing, platform; print(platform.system())"
    for cwd in (ROOT, ROOT / "tests", Path("/")):
        result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_no_init_files_at_the_namespace_levels():
    assert not (ROOT / "platform" / "__init__.py").exists()
    assert not (ROOT / "platform" / "lorafleet" / "__init__.py").exists()


def test_one_source_root():
    """Gateway, worker, billing and CLI are one package under platform/ (every image installs all of it)."""
    roots = {path.parents[2].name for path in ROOT.glob("*/lorafleet/*/__init__.py")}
    assert roots == {"platform"}


def test_test_modules_outside_packages_have_unique_basenames():
    # pytest's default import mode puts each package-less test folder on sys.path, so two
    # test_x.py in such folders collide at collection and stop the whole run (it did in CI).
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if (path.parent / "__init__.py").exists():
            continue
        assert path.name not in seen, f"{path} and {seen[path.name]} share a basename"
        seen[path.name] = path


def test_the_gateway_never_imports_the_dashboard():
    """The app is composed above both (lorafleet/app.py); a gateway → dashboard import is a package cycle."""
    import ast

    offenders = []
    for path in (ROOT / "platform" / "lorafleet" / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names if name.startswith("lorafleet.dashboard")]
    assert not offenders
