"""Build LoRA adapter folders for tests: well-formed ones, and each kind of broken one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from lorafleet.adapters.architecture import Architecture
from lorafleet.adapters.demo import random_lora_tensors, tensor_name  # noqa: F401 - tests import tensor_name here

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
