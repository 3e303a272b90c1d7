"""Correct tokens for base-model requests batched with adapter requests on vLLM's CPU LoRA path.

vLLM's CPU LoRA ops (``vllm/lora/ops/torch_ops/lora_ops.py``) index the stacked adapter weights
with each token's slot index, and "no adapter" is -1, which wraps to the last slot: a base request
sharing a batch with adapter requests gets the last slot's delta, even after that adapter was
removed (slots are not zeroed), and the wrong tokens then live on in the prefix cache. The GPU
kernels skip -1 (upstream PRs #48421, #49656 are open).

The fix zeroes the shrink output (x·A) of tokens whose index is negative: every LoRA delta is
expand(shrink(x)), so those tokens get exactly no delta; a batch with no adapter token skips the
per-token weight gather entirely. It wraps the one function both the
decode (bgmv) and prefill (sgmv) paths go through, in the module and where punica_cpu imported it.
"""

from __future__ import annotations

import functools

_PATCHED = "__lorafleet_masks_negative_indices__"


def install() -> bool:
    """Patch the CPU LoRA ops once per process; False when vLLM's layout is not the one we know."""
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError:
        return False
    original = lora_ops.bgmv_shrink
    if getattr(original, _PATCHED, False):
        return True

    @functools.wraps(original)
    def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
        no_adapter = lora_indices_tensor < 0
        rows = no_adapter.shape[0]
        if bool(no_adapter.all()):
            # A batch without adapter tokens: skip gathering a weight slice per token altogether.
            output_tensor[:rows] = 0
            return
        original(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
        if bool(no_adapter.any()):
            output_tensor[:rows][no_adapter] = 0

    setattr(bgmv_shrink, _PATCHED, True)
    lora_ops.bgmv_shrink = bgmv_shrink  # sgmv_shrink looks this name up at call time
    if getattr(punica_cpu, "bgmv_shrink", None) is original:
        punica_cpu.bgmv_shrink = bgmv_shrink
    return True
