"""Validate an uploaded PEFT LoRA adapter before anything is stored as ready.

Each failure is an :class:`AdapterInvalid` (400) whose ``param`` names the file and, where there
is one, the field or tensor at fault (``adapter_config.json:r``, ``adapter_model.safetensors:<name>``).
The weights are checked from the safetensors header, then read a few MiB at a time for the NaN/Inf
scan: nothing is unpickled, and memory does not grow with the size of the file.

Everything read is bounded: ``adapter_config.json`` at :data:`MAX_CONFIG_BYTES`, the safetensors
header at :data:`MAX_HEADER_BYTES` and at most the tensors a LoRA of the base model can have. Only
the keys vLLM's loader reads (``r``, ``lora_alpha``, ``target_modules``, ``bias``, ``use_rslora``)
are kept, with checked values: the stored config is what every worker writes next to the weights.
No message carries more than :data:`CLIP` characters of a name or value the uploader chose.
"""

from __future__ import annotations

import hashlib
import json
import math
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
# Real adapter configs are under 4 KB; 64 KiB leaves room for long target lists and comments.
MAX_CONFIG_BYTES = 64 * 1024
# The header of the largest LoRA we can serve: a Llama-family base tops out around 126 layers
# (Llama-3.1-405B); 7 modules x 2 tensors x 126 layers = 1,764 entries of ~140 bytes of JSON
# ("base_model.model.model.layers.125.self_attn.q_proj.lora_A.weight": dtype, shape, offsets)
# is ~250 KB. 1 MiB is four times that; the old 16 MiB parsed into hundreds of MB of objects.
MAX_HEADER_BYTES = 1024 * 1024
MAX_LORA_ALPHA = 65536  # alpha is a scale (typically r to 4r, r <= 512); anything larger is a mistake
MAX_NUMBER_CHARS = 32  # a JSON number longer than this is an attack on the parser, not a value
CLIP = 100  # characters of an uploader-chosen name or value a message may carry
DTYPES = {"F16": np.float16, "BF16": np.uint16, "F32": np.float32}  # BF16 is widened by hand
ITEM_SIZE = {"F16": 2, "BF16": 2, "F32": 4}
_SCAN_BYTES = 4 << 20  # a multiple of every item size
# init_lora_weights values that only chose the initial weights (the saved adapter is a plain LoRA);
# the others (pissa, olora, loftq, corda...) change the base model's weights: vLLM refuses them.
PLAIN_INITS = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})
# ASCII digits without leading zeros (as PEFT writes them, and as vLLM matches module names).
_TENSOR_NAME = re.compile(
    r"^base_model\.model\.model\.layers\.(0|[1-9][0-9]{0,5})\.(self_attn|mlp)\.([a-z_]{1,32})\.lora_(A|B)\.weight$"
)


class AdapterInvalid(InvalidRequest):
    default_code = "invalid_adapter"


@dataclass(frozen=True)
class BaseModelSpec:
    name: str
    architecture: Architecture | None  # None while no worker has described the model yet
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


def clip(text: str, limit: int = CLIP) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: Any) -> str:
    """An uploader-chosen value as a message shows it: its repr, clipped."""
    return clip(repr(value))


def _listed(names: list[str]) -> str:
    return clip(", ".join(names))


def validate_files(files: dict[str, Path], base: BaseModelSpec) -> ValidAdapter:
    if base.architecture is None:
        raise InvalidRequest(f"base model {shown(base.name)} has no worker yet to describe it", param="base_model")
    for name in files:
        if name.lower().endswith(PICKLE_SUFFIXES):
            raise AdapterInvalid(
                f"{clip(name)}: pickle-based weight files are not accepted (they can run code when loaded); "
                f"save the adapter with safetensors (PEFT: save_pretrained(..., safe_serialization=True)).",
                param=clip(name),
            )
    unexpected = sorted(set(files) - {CONFIG_FILE, WEIGHTS_FILE} - IGNORED_FILES)
    if unexpected:
        raise AdapterInvalid(
            f"unexpected file(s) {_listed(unexpected)}; an adapter is {CONFIG_FILE} and {WEIGHTS_FILE}",
            param=clip(unexpected[0]),
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
    return AdapterInvalid(f"{CONFIG_FILE}: {message}", param=f"{CONFIG_FILE}:{clip(field)}" if field else CONFIG_FILE)


class _NumberRefused(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberRefused(f"a number of {len(text)} digits")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberRefused(f"a number of {len(text)} characters")
    return float(text)  # 1e309 becomes inf here; non_finite() finds it with its key


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return document


def strict_json(data: bytes) -> Any:
    """JSON with bounded numbers and no repeated keys; raises ValueError (RecursionError when nested too deep).

    ``NaN``/``Infinity`` literals and out-of-range numbers come back as non-finite floats for
    :func:`non_finite` to find with their path.
    """
    return json.loads(data, parse_int=_parse_int, parse_float=_parse_float, object_pairs_hook=_object)


def non_finite(document: Any) -> tuple[str, str] | None:
    """(top-level key, path) of the first NaN or infinite number in a decoded JSON document."""
    stack: list[tuple[str, str, Any]] = [("", "", document)]
    while stack:
        top, path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return top, path
        if isinstance(value, dict):
            stack.extend((top or str(key), f"{path}.{key}" if path else str(key), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((top, f"{path}[{index}]", item) for index, item in enumerate(value))
    return None


def load_config(path: Path) -> dict[str, Any]:
    """``adapter_config.json`` decoded, size-capped and with finite numbers only; fields unchecked."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise _fail_config("", f"{size} bytes is too large for an adapter config (at most {MAX_CONFIG_BYTES} bytes)")
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise _fail_config("", f"too large for an adapter config (at most {MAX_CONFIG_BYTES} bytes)")
    try:
        config = strict_json(data)
    except RecursionError:
        raise _fail_config("", "not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, _NumberRefused
        raise _fail_config("", f"not valid JSON ({clip(str(exc))})") from None
    if not isinstance(config, dict):
        raise _fail_config("", "must be a JSON object")
    bad = non_finite(config)
    if bad is not None:
        raise _fail_config(bad[0], f"{clip(bad[1])} is not a finite number (NaN, Infinity or out of range)")
    return config


def _flag(config: dict[str, Any], field: str) -> bool:
    value = config.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _fail_config(field, f"{field} must be true or false, got {shown(value)}")
    return value


def _validate_config(path: Path, base: BaseModelSpec) -> dict[str, Any]:
    config = load_config(path)
    if config.get("peft_type") != "LORA":
        raise _fail_config("peft_type", f"peft_type must be \"LORA\", got {shown(config.get('peft_type'))}")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise _fail_config("r", f"r must be a positive integer, got {shown(rank)}")
    if rank > base.max_lora_rank:
        raise _fail_config("r", f"rank {rank} is above the workers' max_lora_rank of {base.max_lora_rank}")
    alpha = config.get("lora_alpha", rank)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha <= MAX_LORA_ALPHA:
        raise _fail_config("lora_alpha", f"lora_alpha must be a number above 0 and at most {MAX_LORA_ALPHA}, "
                                         f"got {shown(alpha)}")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        raise _fail_config("target_modules", "a regular expression is not supported; list the module names")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise _fail_config("target_modules", "target_modules must be a non-empty list of module names")
    unsupported = sorted(set(targets) - set(SUPPORTED_MODULES))
    if unsupported:
        raise _fail_config(
            "target_modules",
            f"the engine cannot serve LoRA on {_listed(unsupported)}; supported: {', '.join(SUPPORTED_MODULES)}",
        )
    if config.get("modules_to_save"):
        raise _fail_config("modules_to_save", "modules_to_save (fully trained extra layers) cannot be served")
    for field, message in (
        ("use_dora", "DoRA adapters are not supported"),
        ("fan_in_fan_out", "fan_in_fan_out weights are not supported"),
        ("lora_bias", "LoRA biases (lora_bias) are not supported"),
        ("use_qalora", "QALoRA adapters are not supported"),
        ("use_bdlora", "block-diagonal LoRA (use_bdlora) is not supported"),
        ("alora_invocation_tokens", "Activated LoRA (alora_invocation_tokens) is not supported"),
        ("layer_replication", "layer_replication is not supported"),
        ("target_parameters", "target_parameters (LoRA on raw parameters) is not supported"),
        ("trainable_token_indices", "trainable_token_indices (trained embedding rows) cannot be served"),
    ):
        if config.get(field):
            raise _fail_config(field, message)
    if config.get("bias", "none") != "none":
        raise _fail_config("bias", "trained biases are not supported; use bias=\"none\"")
    for field in ("rank_pattern", "alpha_pattern", "layers_to_transform"):
        if config.get(field):
            raise _fail_config(field, f"{field} is not supported")
    init = config.get("init_lora_weights", True)
    if not isinstance(init, bool) and not (isinstance(init, str) and init.lower() in PLAIN_INITS):
        raise _fail_config("init_lora_weights", f"init_lora_weights={shown(init)} changes the base model's weights; "
                                                "convert the adapter to a plain LoRA first")
    use_rslora = _flag(config, "use_rslora")
    declared_base = config.get("base_model_name_or_path")
    if declared_base is not None and not isinstance(declared_base, str):
        raise _fail_config("base_model_name_or_path",
                           f"base_model_name_or_path must be a string, got {shown(declared_base)}")
    if declared_base and _short_name(declared_base) != _short_name(base.name):
        raise _fail_config(
            "base_model_name_or_path",
            f"adapter was trained on {shown(declared_base)}, not on {shown(base.name)}",
        )
    # Only what vLLM's PEFTHelper reads, checked; everything else the upload said is dropped.
    return {"r": rank, "lora_alpha": alpha, "target_modules": sorted(set(targets)), "bias": "none",
            "use_rslora": use_rslora}


def declared_base_model(files: dict[str, Path], known: list[str]) -> str | None:
    """The served base model the adapter's config names in ``base_model_name_or_path``, if exactly one.

    Lets an upload leave ``base_model`` out when several base models are served. Anything odd
    (no config, unreadable, too large, no match) returns None; full validation comes later.
    """
    path = files.get(CONFIG_FILE)
    if path is None:
        return None
    try:
        declared = load_config(path).get("base_model_name_or_path")
    except (OSError, AdapterInvalid):
        return None
    if not isinstance(declared, str) or not declared:
        return None
    matches = [name for name in known if _short_name(name) == _short_name(declared)]
    return matches[0] if len(matches) == 1 else None


def _short_name(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1].lower()


def _fail_weights(message: str, tensor: str | None = None) -> AdapterInvalid:
    return AdapterInvalid(f"{WEIGHTS_FILE}: {message}", param=f"{WEIGHTS_FILE}:{clip(tensor)}" if tensor else WEIGHTS_FILE)


def read_safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(offset of the data section, header) without loading any tensor; header at most MAX_HEADER_BYTES."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _fail_weights("not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", prefix)
        if 8 + length > size:
            raise _fail_weights("not a safetensors file (bad header length)")
        if length > MAX_HEADER_BYTES:
            raise _fail_weights(f"the header is {length} bytes; a LoRA's header is at most {MAX_HEADER_BYTES} bytes")
        try:
            header = strict_json(handle.read(length))
        except (ValueError, RecursionError):
            raise _fail_weights("not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise _fail_weights("not a safetensors file (header is not an object)")
    header.pop("__metadata__", None)
    return 8 + length, header


def _validate_weights(path: Path, arch: Architecture, rank: int, targets: set[str]) -> None:
    data_start, header = read_safetensors_header(path)
    if not header:
        raise _fail_weights("contains no tensors")
    most = 2 * len(SUPPORTED_MODULES) * arch.num_hidden_layers  # A and B for every module of every layer
    if len(header) > most:
        raise _fail_weights(f"{len(header)} tensors; a LoRA of a {arch.num_hidden_layers}-layer model has at most {most}")
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
            raise _fail_weights(f"tensor for {clip(module)}, which is not in target_modules", name)
        if SUPPORTED_MODULES.get(module) != block:
            raise _fail_weights(f"{module} does not live in {block}", name)
        if layer >= arch.num_hidden_layers:
            raise _fail_weights(f"layer {layer} does not exist (the base model has {arch.num_hidden_layers})", name)
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise _fail_weights(f"dtype {shown(dtype)} is not supported; use float16, bfloat16 or float32", name)
        in_features, out_features = arch.in_out(module)
        expected = [rank, in_features] if kind == "A" else [out_features, rank]
        if not isinstance(shape, list) or not all(type(size) is int for size in shape) or shape != expected:
            raise _fail_weights(f"shape {shown(shape)} does not fit: expected {expected} for rank {rank} on {module}",
                                name)
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
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
        if start > end:
            raise _fail_weights("a gap between tensors' data (safetensors packs them back to back)", name)
    if spans[0][0] != 0 or spans[-1][1] != data_size:
        raise _fail_weights("the tensors' data does not fill the file exactly (bytes before or after it)")
    _check_finite(path, data_start, header)


def _check_finite(path: Path, data_start: int, header: dict[str, Any]) -> None:
    """Scan every tensor for NaN/Inf, a bounded chunk at a time (memory does not grow with the file)."""
    with open(path, "rb") as handle:
        for name, info in header.items():
            begin, end = info["data_offsets"]
            handle.seek(data_start + begin)
            left = end - begin
            while left:
                raw = handle.read(min(left, _SCAN_BYTES))
                if not raw:
                    raise _fail_weights("the file ends inside a tensor", name)
                left -= len(raw)
                if info["dtype"] == "BF16":
                    values = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
                else:
                    values = np.frombuffer(raw, DTYPES[info["dtype"]])
                if not np.isfinite(values).all():
                    raise _fail_weights("contains NaN or Inf values", name)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
