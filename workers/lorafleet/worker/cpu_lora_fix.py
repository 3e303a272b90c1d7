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

Prompt logprobs (``echo`` with ``logprobs``, ``prompt_logprobs``) crash the engine when the request
shares a batch with others: the LoRA logits layer indexes a prompt's per-token hidden states with
the per-request sampler indices (vllm#29955, #16668), and the engine dies for every tenant. Adapters
with lm_head weights are refused at upload (adapters/validation.py), so every served adapter's
logits delta is zero and skipping that layer where the shapes disagree is exact.
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
    _skip_logits_delta_for_prompt_rows(punica_cpu.PunicaWrapperCPU)
    return True


def _skip_logits_delta_for_prompt_rows(wrapper: type) -> None:
    original = wrapper.add_lora_logits

    @functools.wraps(original)
    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *args, **kwargs):
        if x.view(-1, x.shape[-1]).shape[0] != self.sampler_indices.shape[0]:
            return None  # a prompt's rows (prompt logprobs): no served adapter has an lm_head delta
        return original(self, y, x, lora_a_stacked, lora_b_stacked, scale, *args, **kwargs)

    wrapper.add_lora_logits = add_lora_logits
