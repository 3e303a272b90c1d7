"""The soak (`make soak`) for three minutes: the platform started as a user starts it (`lorafleet up`, embedded
database) under mixed traffic, a forced checkpoint, a killed engine and a restarted gateway, then every check.

It starts its own platform beside the session's (idle by then: it runs after every other test), so it is the
longest test of the suite; SOAK_MINUTES overrides its three minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# The checks the report must name, each passed (benchmarks/soak.py CHECKS).
CHECKS = ["ledger rows = admitted requests", "usage = what clients saw", "no unexplained 5xx",
          "gateway RSS flat", "worker RSS flat", "gateway open files flat", "worker open files flat",
          "log files bounded", "WAL recycled", "database log clean", "faults injected and recovered",
          "traffic mix answered"]


@pytest.mark.soak
def test_soak(tmp_path: Path, model_path: Path):
    out = tmp_path / "soak"
    env = dict(os.environ, SOAK_MINUTES=os.environ.get("SOAK_MINUTES", "3"))
    minutes = float(env["SOAK_MINUTES"])
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "soak.py"), "--out", str(out),
                             "--model-path", str(model_path)],
                            env=env, capture_output=True, text=True, timeout=minutes * 60 + 1200)
    report = out.with_suffix(".md").read_text() if out.with_suffix(".md").exists() else ""
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    checks = {c["name"]: c for c in json.loads(out.with_suffix(".json").read_text())["checks"]}
    for name in CHECKS:
        assert f"| {name} | pass |" in report, f"{name}: {checks.get(name, {}).get('detail', 'not in the report')}"
        assert checks[name]["ok"]
