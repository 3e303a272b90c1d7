"""Build LoRA adapter folders for tests: well-formed ones, and each kind of broken one."""

from __future__ import annotations

import json
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from lorafleet.adapters.architecture import Architecture
from lorafleet.adapters.demo import random_lora_tensors, tensor_name  # noqa: F401 - tests import tensor_name here
from safetensors.numpy import save_file

TINY = Architecture(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=16, num_hidden_layers=2)


def lora_tensors(arch: Architecture, rank: int, modules: list[str], dtype=np.float32, seed: int = 0) -> dict[str, np.ndarray]:
    return random_lora_tensors(arch, rank, modules, dtype=dtype, seed=seed)


def lora_config(rank: int, modules: list[str], base: str = "SmolLM2-135M-Instruct", **overrides: Any) -> dict[str, Any]:
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": modules,
              "base_model_name_or_path": base, "bias": "none", "modules_to_save": None, "task_type": "CAUSAL_LM"}
    config.update(overrides)
    return config


def write_adapter(folder: Path, *, arch: Architecture = TINY, rank: int = 8, modules: list[str] | None = None,
                  config: dict[str, Any] | None = None, tensors: dict[str, np.ndarray] | None = None,
                  seed: int = 0) -> Path:
    modules = modules or ["q_proj", "v_proj"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config if config is not None else lora_config(rank, modules)))
    save_file(tensors if tensors is not None else lora_tensors(arch, rank, modules, seed=seed),
              str(folder / "adapter_model.safetensors"))
    return folder


# ---- hostile archives and oversized adapters -------------------------------------------------

MiB = 1 << 20


def tar_block(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> bytes:
    """One 512-byte tar header (GNU format; base-256 sizes past 8 GiB), whatever it declares."""
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(tarfile.GNU_FORMAT)


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def lazy_gzip(path: Path, pieces: list[bytes | tuple[bytes, int]]) -> Path:
    """A gzip file of ``pieces`` in order; ``(chunk, n)`` is ``chunk`` n times, compressed once and
    the compressed block repeated (a full flush makes each block independent), so a file of a few
    hundred KB decompresses to hundreds of MiB without the test ever holding them."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    crc = size = 0
    with open(path, "wb") as out:
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")
        for piece in pieces:
            chunk, times = piece if isinstance(piece, tuple) else (piece, 1)
            if times == 1:
                out.write(compressor.compress(chunk))
            else:
                out.write(compressor.flush(zlib.Z_FULL_FLUSH))
                block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
                out.write(block * times)
            crc = _crc32_combine(crc, *_crc32_repeated(chunk, times))
            size += len(chunk) * times
        out.write(compressor.flush())
        out.write(struct.pack("<II", crc, size & 0xFFFFFFFF))
    return path


def _gf2_times(matrix: list[int], vector: int) -> int:
    result, row = 0, 0
    while vector:
        if vector & 1:
            result ^= matrix[row]
        vector >>= 1
        row += 1
    return result


def _crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """zlib's crc32_combine (not exposed by Python's zlib): the CRC of A+B from CRC(A), CRC(B), len(B)."""
    if length2 == 0:
        return crc1
    odd = [0xEDB88320] + [1 << bit for bit in range(31)]  # one zero bit
    even = [_gf2_times(odd, row) for row in odd]  # two
    odd = [_gf2_times(even, row) for row in even]  # four
    while length2:
        even = [_gf2_times(odd, row) for row in odd]
        if length2 & 1:
            crc1 = _gf2_times(even, crc1)
        length2 >>= 1
        if not length2:
            break
        odd = [_gf2_times(even, row) for row in even]
        if length2 & 1:
            crc1 = _gf2_times(odd, crc1)
        length2 >>= 1
    return crc1 ^ crc2


def _crc32_repeated(chunk: bytes, times: int) -> tuple[int, int]:
    """(CRC, length) of ``chunk * times`` without building it: CRCs combined by doubling."""
    total_crc, total_length = 0, 0
    piece_crc, piece_length = zlib.crc32(chunk), len(chunk)
    while times:
        if times & 1:
            total_crc = _crc32_combine(total_crc, piece_crc, piece_length)
            total_length += piece_length
        piece_crc = _crc32_combine(piece_crc, piece_crc, piece_length)
        piece_length *= 2
        times >>= 1
    return total_crc, total_length


def header_bomb(path: Path, kind: bytes = tarfile.GNUTYPE_LONGNAME, declared: int = 512 * MiB) -> Path:
    """A ~0.5 MB .tar.gz whose first header (a GNU long name by default) declares ``declared`` bytes."""
    return lazy_gzip(path, [tar_block("././@LongLink", declared, kind), (b"a" * MiB, declared // MiB),
                            tar_block("adapter_config.json"), bytes(1024)])


def write_sparse_adapter(folder: Path, arch: Architecture, rank: int, modules: list[str],
                         base: str = "SmolLM2-135M-Instruct") -> Path:
    """A valid adapter of zeros whose weights file is sparse: gigabytes on paper, no disk used."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(lora_config(rank, modules, base=base)))
    header, offset = {}, 0
    for layer in range(arch.num_hidden_layers):
        for module in modules:
            in_features, out_features = arch.in_out(module)
            for kind, shape in (("A", [rank, in_features]), ("B", [out_features, rank])):
                size = shape[0] * shape[1] * 4
                header[tensor_name(layer, module, kind)] = {"dtype": "F32", "shape": shape,
                                                            "data_offsets": [offset, offset + size]}
                offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    weights = folder / "adapter_model.safetensors"
    with open(weights, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        out.truncate(8 + len(encoded) + offset)
    return folder
