"""Validate an uploaded PEFT LoRA adapter before anything is stored as ready.

Each failure is an :class:`AdapterInvalid` (400) whose ``param`` names the file and, where there
is one, the field or tensor at fault (``adapter_config.json:r``, ``adapter_model.safetensors:<name>``).
The weights are checked from the safetensors header and a memory map: nothing is unpickled, and
no tensor is materialised beyond one at a time for the NaN/Inf scan.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lorafleet.adapters.architecture import SUPPORTED_MODULES, Architecture
from lorafleet.core.errors import InvalidRequest

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
IGNORED_FILES = frozenset({"README.md", ".gitattributes"})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_HEADER_BYTES = 16 * 1024 * 1024
DTYPES = {"F16": np.float16, "BF16": np.uint16, "F32": np.float32}  # BF16 is widened by hand
ITEM_SIZE = {"F16": 2, "BF16": 2, "F32": 4}
_TENSOR_NAME = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_(A|B)\.weight$"
)


class AdapterInvalid(InvalidRequest):
    default_code = "invalid_adapter"


@dataclass(frozen=True)
class BaseModelSpec:
    name: str
    architecture: Architecture
    max_lora_rank: int


@dataclass(frozen=True)
class ValidAdapter:
    config: dict[str, Any]
    rank: int
    lora_alpha: float
    target_modules: list[str]
    weights_path: Path
    sha256: str
    size_bytes: int


def validate_files(files: dict[str, Path], base: BaseModelSpec) -> ValidAdapter:
    for name in files:
        if name.lower().endswith(PICKLE_SUFFIXES):
            raise AdapterInvalid(
                f"{name}: pickle-based weight files are not accepted (they can run code when loaded); "
                f"save the adapter with safetensors (PEFT: save_pretrained(..., safe_serialization=True)).",
                param=name,
            )
    unexpected = sorted(set(files) - {CONFIG_FILE, WEIGHTS_FILE} - IGNORED_FILES)
    if unexpected:
        raise AdapterInvalid(
            f"unexpected file(s) {', '.join(unexpected)}; an adapter is {CONFIG_FILE} and {WEIGHTS_FILE}",
            param=unexpected[0],
        )
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if required not in files:
            raise AdapterInvalid(f"{required} is missing", param=required)
    config = _validate_config(files[CONFIG_FILE], base)
    rank, target_modules = config["r"], config["target_modules"]
    weights = files[WEIGHTS_FILE]
    _validate_weights(weights, base.architecture, rank, set(target_modules))
    return ValidAdapter(
        config=config, rank=rank, lora_alpha=float(config["lora_alpha"]), target_modules=target_modules,
        weights_path=weights, sha256=sha256_file(weights), size_bytes=weights.stat().st_size,
    )


def _fail_config(field: str, message: str) -> AdapterInvalid:
    return AdapterInvalid(f"{CONFIG_FILE}: {message}", param=f"{CONFIG_FILE}:{field}" if field else CONFIG_FILE)


def _validate_config(path: Path, base: BaseModelSpec) -> dict[str, Any]:
    try:
        config = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail_config("", f"not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise _fail_config("", "must be a JSON object")
    if config.get("peft_type") != "LORA":
        raise _fail_config("peft_type", f"peft_type must be \"LORA\", got {config.get('peft_type')!r}")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise _fail_config("r", f"r must be a positive integer, got {rank!r}")
    if rank > base.max_lora_rank:
        raise _fail_config("r", f"rank {rank} is above the workers' max_lora_rank of {base.max_lora_rank}")
    alpha = config.get("lora_alpha", rank)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise _fail_config("lora_alpha", f"lora_alpha must be a positive number, got {alpha!r}")
    config["lora_alpha"] = alpha
    targets = config.get("target_modules")
    if isinstance(targets, str):
        raise _fail_config("target_modules", "a regular expression is not supported; list the module names")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise _fail_config("target_modules", "target_modules must be a non-empty list of module names")
    unsupported = sorted(set(targets) - set(SUPPORTED_MODULES))
    if unsupported:
        raise _fail_config(
            "target_modules",
            f"the engine cannot serve LoRA on {', '.join(unsupported)}; supported: {', '.join(SUPPORTED_MODULES)}",
        )
    config["target_modules"] = sorted(set(targets))
    if config.get("modules_to_save"):
        raise _fail_config("modules_to_save", "modules_to_save (fully trained extra layers) cannot be served")
    for flag, message in (
        ("use_dora", "DoRA adapters are not supported"),
        ("fan_in_fan_out", "fan_in_fan_out weights are not supported"),
    ):
        if config.get(flag):
            raise _fail_config(flag, message)
    if config.get("bias", "none") != "none":
        raise _fail_config("bias", "trained biases are not supported; use bias=\"none\"")
    for field in ("rank_pattern", "alpha_pattern", "layers_to_transform"):
        if config.get(field):
            raise _fail_config(field, f"{field} is not supported")
    declared_base = config.get("base_model_name_or_path")
    if declared_base and _short_name(declared_base) != _short_name(base.name):
        raise _fail_config(
            "base_model_name_or_path",
            f"adapter was trained on {declared_base!r}, not on {base.name!r}",
        )
    return config


def declared_base_model(files: dict[str, Path], known: list[str]) -> str | None:
    """The served base model the adapter's config names in ``base_model_name_or_path``, if exactly one.

    Lets an upload leave ``base_model`` out when several base models are served. Anything odd
    (no config, unreadable, too large, no match) returns None; full validation comes later.
    """
    path = files.get(CONFIG_FILE)
    try:
        if path is None or path.stat().st_size > 1_000_000:
            return None
        declared = json.loads(path.read_bytes()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(declared, str) or not declared:
        return None
    matches = [name for name in known if _short_name(name) == _short_name(declared)]
    return matches[0] if len(matches) == 1 else None


def _short_name(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1].lower()


def _fail_weights(message: str, tensor: str | None = None) -> AdapterInvalid:
    return AdapterInvalid(f"{WEIGHTS_FILE}: {message}", param=f"{WEIGHTS_FILE}:{tensor}" if tensor else WEIGHTS_FILE)


def read_safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(offset of the data section, header) without loading any tensor."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _fail_weights("not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise _fail_weights("not a safetensors file (bad header length)")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _fail_weights("not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise _fail_weights("not a safetensors file (header is not an object)")
    header.pop("__metadata__", None)
    return 8 + length, header


def _validate_weights(path: Path, arch: Architecture, rank: int, targets: set[str]) -> None:
    data_start, header = read_safetensors_header(path)
    if not header:
        raise _fail_weights("contains no tensors")
    data_size = path.stat().st_size - data_start
    seen: dict[tuple[int, str], set[str]] = {}
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise _fail_weights("malformed tensor entry", name)
        if "embed" in name or "lm_head" in name:
            raise _fail_weights("embedding and lm_head weights cannot be served as LoRA", name)
        match = _TENSOR_NAME.match(name)
        if match is None:
            raise _fail_weights(
                "unexpected tensor name; expected base_model.model.model.layers.<i>.<self_attn|mlp>.<module>.lora_<A|B>.weight",
                name,
            )
        layer, block, module, kind = int(match[1]), match[2], match[3], match[4]
        if module not in targets:
            raise _fail_weights(f"tensor for {module}, which is not in target_modules", name)
        if SUPPORTED_MODULES.get(module) != block:
            raise _fail_weights(f"{module} does not live in {block}", name)
        if layer >= arch.num_hidden_layers:
            raise _fail_weights(f"layer {layer} does not exist (the base model has {arch.num_hidden_layers})", name)
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPES:
            raise _fail_weights(f"dtype {dtype} is not supported; use float16, bfloat16 or float32", name)
        in_features, out_features = arch.in_out(module)
        expected = [rank, in_features] if kind == "A" else [out_features, rank]
        if shape != expected:
            raise _fail_weights(f"shape {shape} does not fit: expected {expected} for rank {rank} on {module}", name)
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_size
                or offsets[1] - offsets[0] != expected[0] * expected[1] * ITEM_SIZE[dtype]):
            raise _fail_weights("data offsets do not match the tensor's shape and dtype", name)
        spans.append((offsets[0], offsets[1], name))
        seen.setdefault((layer, module), set()).add(kind)
    for (layer, module), kinds in seen.items():
        if kinds != {"A", "B"}:
            missing = ({"A", "B"} - kinds).pop()
            raise _fail_weights(f"layer {layer} {module} has no lora_{missing} tensor")
    spans.sort()
    for (_, end, _), (start, _, name) in zip(spans, spans[1:]):
        if start < end:
            raise _fail_weights("tensor data overlaps another tensor", name)
    _check_finite(path, data_start, header)


def _check_finite(path: Path, data_start: int, header: dict[str, Any]) -> None:
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        for name, info in header.items():
            begin, end = info["data_offsets"]
            raw = mapped[data_start + begin: data_start + end]
            if info["dtype"] == "BF16":
                values = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                values = raw.view(DTYPES[info["dtype"]])
            if not np.isfinite(values).all():
                raise _fail_weights("contains NaN or Inf values", name)
    finally:
        del mapped


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
