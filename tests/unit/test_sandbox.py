"""Inspection in a child process: same answers as in-process validation, errors of the same class
and param, and a hostile or heavy upload costs the child, never the gateway."""

from __future__ import annotations

import re
import sys
import tarfile
from pathlib import Path

import psutil
import pytest
from lorafleet.adapters import sandbox
from lorafleet.adapters.architecture import SUPPORTED_MODULES, Architecture
from lorafleet.adapters.sandbox import (
    TOO_COMPLEX,
    SandboxError,
    SandboxLimits,
    inspect_upload,
)
from lorafleet.adapters.selection import select_base_model
from lorafleet.adapters.validation import AdapterInvalid, BaseModelSpec, validate_files
from lorafleet.core.errors import InvalidRequest

from tests.adapter_factory import (
    TINY,
    MiB,
    header_bomb,
    lora_config,
    write_adapter,
    write_sparse_adapter,
)

BASE = BaseModelSpec(name="SmolLM2-135M-Instruct", architecture=TINY, max_lora_rank=16)
OTHER = BaseModelSpec(name="Llama-3.2-1B-Instruct", architecture=TINY, max_lora_rank=64)
LIMITS = SandboxLimits(max_files=16, max_bytes=256 * MiB)
# A Llama-3-8B-shaped model: a rank-64 LoRA on every module is 671 MB of weights.
BIG = Architecture(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                   head_dim=128, num_hidden_layers=32)


def _parts(folder: Path) -> list[tuple[str, Path]]:
    return [(path.name, path) for path in sorted(folder.iterdir())]


def _files(folder: Path) -> dict[str, Path]:
    return {path.name: path for path in folder.iterdir()}


def _reset_peak_rss() -> int:
    """Restart this process's peak-RSS counter (Linux: VmHWM); returns the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return psutil.Process().memory_info().rss


def _peak_rss() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)[1]) * 1024


# ---- same answers as in-process ----------------------------------------------------------------

async def test_a_valid_adapter_round_trips(tmp_path):
    folder = write_adapter(tmp_path / "upload", modules=["q_proj", "v_proj", "down_proj"])
    inspection = await inspect_upload(_parts(folder), tmp_path, [BASE], None, LIMITS)
    assert inspection.base_model == BASE.name
    assert inspection.adapter == validate_files(_files(folder), BASE)


async def test_an_archive_round_trips(tmp_path):
    folder = write_adapter(tmp_path / "my-adapter")
    archive = tmp_path / "upload" / "my-adapter.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as bundle:
        bundle.add(folder, arcname="my-adapter")
    inspection = await inspect_upload([(archive.name, archive)], tmp_path, [BASE], None, LIMITS)
    expected = validate_files(_files(folder), BASE)
    weights = inspection.adapter.weights_path
    assert weights.is_relative_to(tmp_path) and weights.parent != folder and weights.read_bytes() == (
        folder / "adapter_model.safetensors").read_bytes()
    assert inspection.adapter == type(expected)(**{**expected.__dict__, "weights_path": weights})


# ---- errors keep their class, message and param --------------------------------------------------

async def test_an_adapter_error_keeps_its_param_and_message(tmp_path):
    folder = write_adapter(tmp_path / "upload", config=lora_config(32, ["q_proj", "v_proj"]))
    with pytest.raises(AdapterInvalid) as in_process:
        validate_files(_files(folder), BASE)
    with pytest.raises(AdapterInvalid) as caught:
        await inspect_upload(_parts(folder), tmp_path, [BASE], None, LIMITS)
    assert caught.value.param == "adapter_config.json:r" == in_process.value.param
    assert caught.value.message == in_process.value.message and caught.value.code == "invalid_adapter"


async def test_an_archive_error_names_the_archive(tmp_path):
    bomb = header_bomb(tmp_path / "bomb.tar.gz")
    with pytest.raises(AdapterInvalid) as caught:
        await inspect_upload([("bomb.tar.gz", bomb)], tmp_path, [BASE], None, LIMITS)
    assert caught.value.param == "bomb.tar.gz" and "extended header" in caught.value.message


@pytest.mark.parametrize(("bases", "requested", "message"), [
    ([BASE], "nope", "no base model named 'nope'"),
    ([BASE, OTHER], None, "several base models are served"),
    ([BaseModelSpec("SmolLM2-135M-Instruct", None, 16)], None, "has no worker yet"),
    ([], None, "no base model is served yet"),
])
async def test_base_model_errors_stay_invalid_requests_on_base_model(tmp_path, bases, requested, message):
    folder = write_adapter(tmp_path / "upload", config=lora_config(8, ["q_proj"], base="someone/unknown-model"))
    with pytest.raises(InvalidRequest) as caught:
        await inspect_upload(_parts(folder), tmp_path, bases, requested, LIMITS)
    assert type(caught.value) is InvalidRequest and caught.value.param == "base_model"
    assert message in caught.value.message


# ---- base selection (the pure function the child runs) -------------------------------------------

def test_the_requested_base_wins_then_the_declared_one_then_the_only_one(tmp_path):
    config = lora_config(8, ["q_proj"], base="meta-llama/Llama-3.2-1B-Instruct")
    declared = _files(write_adapter(tmp_path / "a", config=config))
    silent = _files(write_adapter(tmp_path / "b", config=lora_config(8, ["q_proj"], base=None)))
    assert select_base_model([BASE, OTHER], BASE.name, declared) is BASE
    assert select_base_model([BASE, OTHER], None, declared) is OTHER
    assert select_base_model([OTHER], None, silent) is OTHER
    with pytest.raises(InvalidRequest, match="several base models"):
        select_base_model([BASE, OTHER], None, silent)
    with pytest.raises(InvalidRequest) as caught:
        select_base_model([BASE], "x" * 5000, silent)
    assert len(caught.value.message) < 150


# ---- the gateway does not pay for the upload -----------------------------------------------------

async def test_the_parent_does_not_grow_while_the_child_refuses_a_bomb(tmp_path):
    bomb = header_bomb(tmp_path / "bomb.tar.gz")  # 0.5 MB that tarfile would read as a 512 MiB name
    before = _reset_peak_rss()
    with pytest.raises(AdapterInvalid):
        await inspect_upload([("bomb.tar.gz", bomb)], tmp_path, [BASE], None, LIMITS)
    assert _peak_rss() - before < 32 * MiB


async def test_a_child_out_of_memory_is_a_clean_adapter_invalid(tmp_path):
    folder = write_adapter(tmp_path / "upload")
    with pytest.raises(AdapterInvalid) as caught:
        await inspect_upload(_parts(folder), tmp_path, [BASE], None,
                             SandboxLimits(max_files=16, max_bytes=256 * MiB, memory_bytes=64 * MiB))
    assert caught.value.message == TOO_COMPLEX and caught.value.status_code == 400


async def test_a_child_out_of_cpu_is_a_clean_adapter_invalid(tmp_path):
    # 671 MB of (sparse, zero) weights: the NaN scan and the hash need ~2 s of CPU; the child has 1.
    folder = write_sparse_adapter(tmp_path / "upload", BIG, 64, list(SUPPORTED_MODULES))
    big_base = BaseModelSpec(BASE.name, BIG, 64)
    with pytest.raises(AdapterInvalid) as caught:
        await inspect_upload(_parts(folder), tmp_path, [big_base], None,
                             SandboxLimits(max_files=16, max_bytes=1 << 30, cpu_seconds=1))
    assert caught.value.message == TOO_COMPLEX and caught.value.param == "file"


async def test_a_child_that_floods_stdout_is_cut_off(tmp_path, monkeypatch):
    flood = "import sys; sys.stdout.buffer.write(b'x' * (256 << 20))"
    monkeypatch.setattr(sandbox, "_command", lambda limits: [sys.executable, "-c", flood])
    before = _reset_peak_rss()
    with pytest.raises(SandboxError):
        await inspect_upload(_parts(write_adapter(tmp_path / "upload")), tmp_path, [BASE], None, LIMITS)
    assert _peak_rss() - before < 16 * MiB


async def test_a_dying_child_s_stderr_never_reaches_the_message(tmp_path, monkeypatch):
    noisy = "import sys; sys.stderr.write('secret-' * 2_000_000); sys.exit(3)"
    monkeypatch.setattr(sandbox, "_command", lambda limits: [sys.executable, "-c", noisy])
    before = _reset_peak_rss()
    with pytest.raises(AdapterInvalid) as caught:
        await inspect_upload(_parts(write_adapter(tmp_path / "upload")), tmp_path, [BASE], None, LIMITS)
    assert caught.value.message == TOO_COMPLEX and "secret" not in str(caught.value.envelope())
    assert _peak_rss() - before < 16 * MiB
