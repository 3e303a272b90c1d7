"""Upper bounds on a request's tokens before it runs, for reservations and tokens/min limits.

The gateway does not tokenize. Every token of a byte-level BPE (or SentencePiece with byte
fallback) vocabulary covers at least one byte of text, so a prompt has at most as many tokens as
its UTF-8 bytes; the JSON encoding of the messages is longer still and also pays for the chat
template's per-message tokens. ``TEMPLATE_ALLOWANCE`` covers what a template adds on its own (a
default system prompt, the generation prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from lorafleet.gateway.openai.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields

TEMPLATE_ALLOWANCE = 64
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class TokenBounds:
    prompt: int        # all prompts together
    completion: int    # all choices together
    single_sequence: bool  # one prompt, one choice: prompt + completion ≤ context applies

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def token_bounds(raw: dict[str, Any], parsed: SamplingFields, context_length: int) -> TokenBounds:
    if isinstance(parsed, ChatCompletionRequest):
        prompt = len(_encode(raw.get("messages"))) + TEMPLATE_ALLOWANCE
        for extra in ("tools", "functions", "response_format", "chat_template_kwargs"):
            if extra in raw:
                prompt += len(_encode(raw[extra]))
        prompt = min(prompt, context_length)  # a longer prompt is refused by the engine, unbilled
        prompts = 1
        requested = parsed.max_completion_tokens or parsed.max_tokens
    else:
        assert isinstance(parsed, CompletionRequest)
        prompt, prompts = _completion_prompt_bound(parsed.prompt, context_length)
        requested = parsed.max_tokens
    per_choice = min(requested or context_length, context_length)
    sequences = prompts * parsed.n
    return TokenBounds(prompt=prompt, completion=per_choice * sequences, single_sequence=sequences == 1)


def _completion_prompt_bound(prompt: Any, context_length: int) -> tuple[int, int]:
    """(token bound over all prompts, number of prompts); each prompt is also capped by the context."""
    if isinstance(prompt, str):
        return min(len(prompt.encode()) + TEMPLATE_ALLOWANCE, context_length), 1
    if prompt and all(isinstance(item, int) for item in prompt):
        return min(len(prompt), context_length), 1  # one prompt as token ids: exact
    total = 0
    for item in prompt:
        size = len(item) if isinstance(item, list) else len(str(item).encode()) + TEMPLATE_ALLOWANCE
        total += min(size, context_length)
    return total, len(prompt)
