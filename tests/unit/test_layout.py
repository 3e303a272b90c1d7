"""The three distributions' layout (docs/architecture.md, "Three distributions") and its import rules.

The rules themselves are import-linter contracts in pyproject.toml ([tool.importlinter]); this test
runs them, so `make test` holds them as `make lint` does.
"""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = {"platform": "lorafleet-platform", "billing": "lorafleet-billing", "workers": "lorafleet-workers"}


def test_stdlib_platform_still_works_from_the_repository_root():
    result = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.system())"], cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_one_namespace_package_across_the_distributions():
    code = ("import lorafleet.gateway, lorafleet.worker, lorafleet.trainer, lorafleet.billing, lorafleet.devtools, "
            "platform; print(platform.system())")
    for cwd in (ROOT, ROOT / "tests", Path("/")):
        result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_no_init_files_at_the_namespace_levels():
    for root in (*DISTRIBUTIONS, "tests/support"):
        assert not (ROOT / root / "__init__.py").exists()
        assert not (ROOT / root / "lorafleet" / "__init__.py").exists(), f"{root}/lorafleet would end the namespace"


def test_each_distribution_owns_its_packages():
    """The card's top level: platform/, billing/, workers/, each its own pyproject.toml."""
    owners = {path.parts[-2]: path.parents[2].relative_to(ROOT).as_posix()
              for path in ROOT.glob("*/lorafleet/*/__init__.py")}
    assert {pkg for pkg, root in owners.items() if root == "workers"} == {"worker", "trainer", "models"}
    assert {pkg for pkg, root in owners.items() if root == "billing"} == {"billing"}
    assert "devtools" not in owners, "dev-only helpers ship in no distribution (tests/support)"
    for root, name in DISTRIBUTIONS.items():
        assert tomllib.loads((ROOT / root / "pyproject.toml").read_text())["project"]["name"] == name


def test_test_modules_outside_packages_have_unique_basenames():
    # pytest's default import mode puts each package-less test folder on sys.path, so two
    # test_x.py in such folders collide at collection and stop the whole run (it did in CI).
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if (path.parent / "__init__.py").exists():
            continue
        assert path.name not in seen, f"{path} and {seen[path.name]} share a basename"
        seen[path.name] = path


def test_the_import_contracts_hold():
    """Layers, worker/gateway independence, what each distribution must not import (pyproject.toml)."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
