"""The dimensions of a base model that decide which LoRA tensors fit it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

# Linear layers of Llama-family models that vLLM can serve LoRA on, and the block each lives in.
SUPPORTED_MODULES: dict[str, str] = {
    "q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
    "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp",
}


class Architecture(msgspec.Struct, frozen=True, kw_only=True):
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_hidden_layers: int
    vocab_size: int | None = None  # the gateway refuses token ids outside it (gateway/openai/bounds.py)

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> Architecture:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            num_hidden_layers=int(config["num_hidden_layers"]),
            vocab_size=int(config["vocab_size"]) if config.get("vocab_size") else None,
        )

    def in_out(self, module: str) -> tuple[int, int]:
        """(in_features, out_features) of a target module's base weight."""
        attention = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        return {
            "q_proj": (self.hidden_size, attention),
            "k_proj": (self.hidden_size, kv),
            "v_proj": (self.hidden_size, kv),
            "o_proj": (attention, self.hidden_size),
            "gate_proj": (self.hidden_size, self.intermediate_size),
            "up_proj": (self.hidden_size, self.intermediate_size),
            "down_proj": (self.intermediate_size, self.hidden_size),
        }[module]


def model_architecture(model_path: Path) -> Architecture:
    """The architecture of a Hugging Face model folder, from its config.json."""
    return Architecture.from_hf_config(json.loads((model_path / "config.json").read_text()))
