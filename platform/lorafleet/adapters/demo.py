"""A random, valid LoRA adapter for a base model: the demo adapter `lorafleet up` registers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from lorafleet.adapters.architecture import SUPPORTED_MODULES, Architecture
from safetensors.numpy import save_file


def tensor_name(layer: int, module: str, kind: str) -> str:
    """PEFT's name for a LoRA tensor of a Llama-family model."""
    return f"base_model.model.model.layers.{layer}.{SUPPORTED_MODULES[module]}.{module}.lora_{kind}.weight"


def random_lora_tensors(arch: Architecture, rank: int, modules: list[str] | tuple[str, ...], *,
                        dtype: type = np.float16, seed: int = 0, scale: float = 0.05) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(arch.num_hidden_layers):
        for module in modules:
            in_features, out_features = arch.in_out(module)
            tensors[tensor_name(layer, module, "A")] = (rng.standard_normal((rank, in_features)) * scale).astype(dtype)
            tensors[tensor_name(layer, module, "B")] = (rng.standard_normal((out_features, rank)) * scale).astype(dtype)
    return tensors


def write_random_adapter(folder: Path, arch: Architecture, base_model: str, *, rank: int = 8,
                         modules: tuple[str, ...] = ("q_proj", "v_proj"), seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(random_lora_tensors(arch, rank, modules, seed=seed), str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(modules),
              "base_model_name_or_path": base_model, "bias": "none", "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder
