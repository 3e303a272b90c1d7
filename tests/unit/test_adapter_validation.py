"""Every validation rule, each with a crafted bad adapter; and the archive rules."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from lorafleet.adapters.archive import extract
from lorafleet.adapters.validation import AdapterInvalid, BaseModelSpec, validate_files

from tests.adapter_factory import (
    TINY,
    lora_config,
    lora_tensors,
    tensor_name,
    write_adapter,
)

BASE = BaseModelSpec(name="SmolLM2-135M-Instruct", architecture=TINY, max_lora_rank=16)


def _files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir()}


def _invalid(folder: Path) -> AdapterInvalid:
    with pytest.raises(AdapterInvalid) as caught:
        validate_files(_files(folder), BASE)
    return caught.value


def test_a_good_adapter_passes(tmp_path):
    valid = validate_files(_files(write_adapter(tmp_path / "a", modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                          "gate_proj", "up_proj", "down_proj"])), BASE)
    assert valid.rank == 8 and valid.target_modules == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert len(valid.sha256) == 64 and valid.size_bytes > 0


def _save_torch(folder: Path, tensors: dict, modules: list[str]) -> Path:
    """An adapter whose weights torch wrote (the only writer of real bfloat16 safetensors here)."""
    from safetensors.torch import save_file as save_torch

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(lora_config(8, modules)))
    save_torch(tensors, str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_adapters_pass_and_are_scanned(tmp_path, dtype):
    import torch

    tensors = {name: torch.from_numpy(array).to(getattr(torch, dtype))
               for name, array in lora_tensors(TINY, 8, ["q_proj"]).items()}
    good = _save_torch(tmp_path / "good", tensors, ["q_proj"])
    header = json.loads((good / "adapter_model.safetensors").read_bytes()[8:][: struct.unpack(
        "<Q", (good / "adapter_model.safetensors").read_bytes()[:8])[0]])
    assert {info["dtype"] for name, info in header.items() if name != "__metadata__"} == {
        {"float16": "F16", "bfloat16": "BF16"}[dtype]}
    valid = validate_files(_files(good), BASE)
    assert valid.rank == 8 and valid.target_modules == ["q_proj"]
    # The NaN scan reads this dtype too: one NaN deep inside a tensor is refused, naming it.
    name = sorted(tensors)[-1]
    poisoned = dict(tensors)
    poisoned[name] = tensors[name].clone()
    poisoned[name].view(-1)[-1] = float("nan")
    error = _invalid(_save_torch(tmp_path / "nan", poisoned, ["q_proj"]))
    assert "NaN" in error.message and name in error.param


def test_pickle_weights_are_refused(tmp_path):
    folder = write_adapter(tmp_path / "a")
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    error = _invalid(folder)
    assert error.param == "adapter_model.bin" and "pickle" in error.message


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"peft_type": "PREFIX_TUNING"}, "peft_type"),
        ({"r": 32}, "r"),
        ({"r": 0}, "r"),
        ({"r": "8"}, "r"),
        ({"target_modules": ["q_proj", "embed_tokens"]}, "target_modules"),
        ({"target_modules": ".*proj"}, "target_modules"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"base_model_name_or_path": "meta-llama/Llama-3-8B"}, "base_model_name_or_path"),
        ({"use_dora": True}, "use_dora"),
        ({"bias": "all"}, "bias"),
        ({"lora_alpha": -1}, "lora_alpha"),
    ],
)
def test_config_rules(tmp_path, config, field):
    base_config = lora_config(8, ["q_proj", "v_proj"])
    base_config.update(config)
    error = _invalid(write_adapter(tmp_path / "a", config=base_config))
    assert error.param == f"adapter_config.json:{field}", error.message
    assert error.status_code == 400


def test_missing_or_broken_config(tmp_path):
    folder = write_adapter(tmp_path / "a")
    (folder / "adapter_config.json").unlink()
    assert _invalid(folder).param == "adapter_config.json"
    (folder / "adapter_config.json").write_text("{not json")
    assert "not valid JSON" in _invalid(folder).message


def _weights_error(tmp_path: Path, tensors: dict, modules=("q_proj", "v_proj"), rank=8) -> AdapterInvalid:
    return _invalid(write_adapter(tmp_path / "w", config=lora_config(rank, list(modules)), tensors=tensors))


def test_weight_rules(tmp_path):
    good = lora_tensors(TINY, 8, ["q_proj", "v_proj"])
    name_a = tensor_name(0, "q_proj", "A")

    embedding = dict(good, **{"base_model.model.model.embed_tokens.lora_embedding_A": np.zeros((8, 10), np.float32)})
    assert "embedding" in _weights_error(tmp_path / "1", embedding).message

    wrong_target = dict(good, **{tensor_name(0, "k_proj", "A"): np.zeros((8, 64), np.float32)})
    assert "not in target_modules" in _weights_error(tmp_path / "2", wrong_target).message

    bad_shape = dict(good, **{name_a: np.zeros((8, 65), np.float32)})
    error = _weights_error(tmp_path / "3", bad_shape)
    assert error.param == f"adapter_model.safetensors:{name_a}" and "[8, 64]" in error.message

    rank_mismatch = lora_tensors(TINY, 4, ["q_proj", "v_proj"])
    assert "shape" in _weights_error(tmp_path / "4", rank_mismatch).message

    bad_dtype = dict(good, **{name_a: np.zeros((8, 64), np.int32)})
    assert "dtype" in _weights_error(tmp_path / "5", bad_dtype).message

    nan = dict(good)
    nan[name_a] = good[name_a].copy()
    nan[name_a][0, 0] = np.nan
    assert "NaN" in _weights_error(tmp_path / "6", nan).message

    inf = dict(good)
    inf[name_a] = good[name_a].astype(np.float16)
    inf[name_a][1, 1] = np.inf
    assert "NaN or Inf" in _weights_error(tmp_path / "7", inf).message

    too_deep = dict(good, **{tensor_name(5, "q_proj", "A"): np.zeros((8, 64), np.float32),
                             tensor_name(5, "q_proj", "B"): np.zeros((64, 8), np.float32)})
    assert "layer 5 does not exist" in _weights_error(tmp_path / "8", too_deep).message

    half = {k: v for k, v in good.items() if k != tensor_name(1, "v_proj", "B")}
    assert "no lora_B" in _weights_error(tmp_path / "9", half).message

    odd_name = dict(good, **{"model.layers.0.q_proj.weight": np.zeros((64, 64), np.float32)})
    assert "unexpected tensor name" in _weights_error(tmp_path / "10", odd_name).message


def test_not_a_safetensors_file(tmp_path):
    folder = write_adapter(tmp_path / "a")
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 4)
    assert "not a safetensors file" in _invalid(folder).message
    (folder / "adapter_model.safetensors").write_bytes((10**12).to_bytes(8, "little") + b"{}")
    assert "bad header length" in _invalid(folder).message



# ---- bounded config and header ----------------------------------------------------------------

def _config_error(tmp_path: Path, raw: str | bytes) -> AdapterInvalid:
    folder = write_adapter(tmp_path / "c")
    (folder / "adapter_config.json").write_bytes(raw.encode() if isinstance(raw, str) else raw)
    return _invalid(folder)


def test_a_20_mb_config_is_refused(tmp_path):
    config = lora_config(8, ["q_proj", "v_proj"], notes="x" * 20_000_000)
    error = _config_error(tmp_path, json.dumps(config))
    assert error.param == "adapter_config.json" and "at most 65536 bytes" in error.message
    assert len(error.message) < 200


@pytest.mark.parametrize("alpha", ["Infinity", "-Infinity", "NaN", "1e309"])
def test_non_finite_lora_alpha_is_refused(tmp_path, alpha):
    raw = json.dumps(lora_config(8, ["q_proj", "v_proj"], lora_alpha=0))
    raw = raw.replace('"lora_alpha": 0', f'"lora_alpha": {alpha}')
    error = _config_error(tmp_path, raw)
    assert error.param == "adapter_config.json:lora_alpha" and "not a finite number" in error.message


def test_non_finite_numbers_are_refused_anywhere(tmp_path):
    raw = json.dumps(lora_config(8, ["q_proj", "v_proj"], lora_dropout=0))
    raw = raw.replace('"lora_dropout": 0', '"lora_dropout": NaN')
    error = _config_error(tmp_path, raw)
    assert error.param == "adapter_config.json:lora_dropout", error.message


@pytest.mark.parametrize(("raw", "message"), [
    ('{"r": ' + "9" * 5000 + "}", "not valid JSON"),  # CPython's int parser refuses 4300+ digits: was a 500
    ("[" * 30_000 + "]" * 30_000, "not valid JSON"),  # deep nesting: was a RecursionError
    ('{"r": 1.' + "5" * 100 + "}", "not valid JSON"),
])
def test_hostile_json_is_a_clean_refusal(tmp_path, raw, message):
    error = _config_error(tmp_path, raw)
    assert error.param == "adapter_config.json" and message in error.message and len(error.message) < 200


def test_only_the_keys_vllm_reads_are_kept(tmp_path):
    config = lora_config(8, ["v_proj", "q_proj", "q_proj"], lora_alpha=12.5, use_rslora=True, lora_dropout=0.05,
                         revision="x" * 1000, auto_mapping={"a": [1, 2, 3]}, init_lora_weights="gaussian")
    valid = validate_files(_files(write_adapter(tmp_path / "a", config=config)), BASE)
    assert valid.config == {"r": 8, "lora_alpha": 12.5, "target_modules": ["q_proj", "v_proj"], "bias": "none",
                            "use_rslora": True}
    assert valid.lora_alpha == 12.5


@pytest.mark.parametrize(("config", "field"), [
    ({"use_rslora": "false"}, "use_rslora"),  # a string is truthy: vLLM would scale by alpha/sqrt(r)
    ({"init_lora_weights": "pissa"}, "init_lora_weights"),  # PiSSA changes the base weights
    ({"lora_bias": True}, "lora_bias"),
    ({"layer_replication": [[0, 1]]}, "layer_replication"),
    ({"base_model_name_or_path": ["SmolLM2-135M-Instruct"]}, "base_model_name_or_path"),  # was a 500
    ({"lora_alpha": 1_000_000}, "lora_alpha"),
])
def test_config_values_vllm_would_misread_are_refused(tmp_path, config, field):
    base_config = lora_config(8, ["q_proj", "v_proj"])
    base_config.update(config)
    error = _invalid(write_adapter(tmp_path / "a", config=base_config))
    assert error.param == f"adapter_config.json:{field}", error.message


def test_uploader_values_are_clipped_in_messages(tmp_path):
    config = lora_config(8, ["q_proj", "v_proj"], peft_type="P" * 10_000)
    error = _invalid(write_adapter(tmp_path / "a", config=config))
    assert error.param == "adapter_config.json:peft_type" and "P" * 101 not in error.message
    modules = [f"m{i}_" + "z" * 50 for i in range(200)]
    error = _invalid(write_adapter(tmp_path / "b", config=lora_config(8, modules)))
    assert error.param == "adapter_config.json:target_modules" and len(error.message) < 300


def _raw_weights(folder: Path, header: bytes, data: bytes = b"") -> None:
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + data)


def test_a_safetensors_header_over_1_mib_is_refused(tmp_path):
    folder = write_adapter(tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    raw = weights.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    padded = raw[8:8 + length] + b" " * (2 * 1024 * 1024)  # valid JSON: trailing spaces
    _raw_weights(folder, padded, raw[8 + length:])
    error = _invalid(folder)
    assert error.param == "adapter_model.safetensors" and "at most 1048576 bytes" in error.message


def test_more_tensors_than_the_base_model_has_are_refused(tmp_path):
    folder = write_adapter(tmp_path / "a")
    header = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]} for i in range(15_000)}
    _raw_weights(folder, json.dumps(header, separators=(",", ":")).encode(), b"\0" * 4)
    error = _invalid(folder)
    assert "15000 tensors" in error.message and "at most 28" in error.message


def test_a_long_tensor_name_is_clipped(tmp_path):
    good = lora_tensors(TINY, 8, ["q_proj", "v_proj"])
    odd = dict(good, **{"w" * 10_000: np.zeros((2, 2), np.float32)})
    error = _weights_error(tmp_path, odd)
    assert "unexpected tensor name" in error.message
    assert len(error.param) <= len("adapter_model.safetensors:") + 100 and "w" * 101 not in error.message

# ---- archives -------------------------------------------------------------------------------

def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as bundle:
        for info, data in members:
            bundle.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def _extract(tmp_path: Path, archive: Path, name: str = "a.tar.gz", **limits) -> dict[str, Path]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return extract(archive, name, out, max_files=limits.get("max_files", 8), max_bytes=limits.get("max_bytes", 10_000))


def test_a_good_archive_in_one_folder_extracts(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", [_info("my-adapter/", kind=tarfile.DIRTYPE),
                                           _info("my-adapter/adapter_config.json", b"{}"),
                                           _info("my-adapter/adapter_model.safetensors", b"xx")])
    assert sorted(_extract(tmp_path, archive)) == ["adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_info("/etc/passwd", b"x"), "absolute path"),
        (_info("../../evil", b"x"), "climbs out"),
        (_info("a/../../evil", b"x"), "climbs out"),
        (_info("link", kind=tarfile.SYMTYPE, link="/etc/passwd"), "link or special"),
        (_info("hard", kind=tarfile.LNKTYPE, link="adapter_config.json"), "link or special"),
        (_info("dev", kind=tarfile.CHRTYPE), "link or special"),
        (_info("a/b/c/deep.json", b"x"), "nested too deep"),
    ],
)
def test_hostile_tar_members(tmp_path, member, message):
    archive = _tar(tmp_path / "a.tar.gz", [member])
    with pytest.raises(AdapterInvalid, match=message):
        _extract(tmp_path, archive)
    assert not (tmp_path.parent / "evil").exists()


def test_file_count_and_decompressed_size_caps(tmp_path):
    many = _tar(tmp_path / "many.tar.gz", [_info(f"f{i}", b"x") for i in range(9)])
    with pytest.raises(AdapterInvalid, match="more than 8 files"):
        _extract(tmp_path, many)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("adapter_model.safetensors", b"\0" * 1_000_000)  # ~1 KB compressed
    assert bomb.stat().st_size < 5_000
    with pytest.raises(AdapterInvalid, match="more than 10000 bytes"):
        _extract(tmp_path, bomb, "bomb.zip")


def test_zip_symlink_and_traversal(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        link = zipfile.ZipInfo("link")
        link.external_attr = (0o120777 << 16)
        bundle.writestr(link, "/etc/passwd")
    with pytest.raises(AdapterInvalid, match="link or special"):
        _extract(tmp_path, archive, "a.zip")
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../evil", "x")
    with pytest.raises(AdapterInvalid, match="climbs out"):
        _extract(tmp_path, archive, "a.zip")


def test_not_an_archive(tmp_path):
    junk = tmp_path / "a.tar.gz"
    junk.write_bytes(b"definitely not gzip")
    with pytest.raises(AdapterInvalid, match="not a readable archive"):
        _extract(tmp_path, junk)


def _header_of(folder: Path) -> tuple[dict, bytes]:
    raw = (folder / "adapter_model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def _with_entry(header: dict, name: str, **changes) -> dict:
    first = next(iter(header))
    entry = dict(header[first], **changes)
    return {**{k: v for k, v in header.items() if k != first}, name: entry}


def test_header_values_that_crashed_validation_or_the_loader_are_refused(tmp_path):
    folder = write_adapter(tmp_path / "a")
    header, data = _header_of(folder)
    first = next(iter(header))
    cases = [
        # a 5000-digit layer number: int() refused it with a ValueError (a 500)
        (_with_entry(header, first.replace("layers.0.", "layers." + "1" * 5000 + ".")), "unexpected tensor name"),
        (_with_entry(header, first, dtype=["F32"]), "dtype"),  # unhashable: was a TypeError (a 500)
        (_with_entry(header, first, shape=[8.0, 64.0]), "shape"),  # 8.0 == 8, but safetensors wants integers
    ]
    for bad, message in cases:
        _raw_weights(folder, json.dumps(bad).encode(), data)
        assert message in _invalid(folder).message
    _raw_weights(folder, json.dumps(header).encode(), data + b"\0" * 4096)  # bytes after the last tensor
    assert "does not fill the file" in _invalid(folder).message
    duplicated = json.dumps(header)[:-1] + ", " + json.dumps({first: header[first]})[1:]
    _raw_weights(folder, duplicated.encode(), data)
    assert "not a safetensors file" in _invalid(folder).message
