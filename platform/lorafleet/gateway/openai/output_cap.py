"""The output cap a generation request gets when it sets none, so it cannot outlive its client's timeout.

A chat or Responses request without ``max_tokens``/``max_completion_tokens``/``max_output_tokens``
would otherwise generate to the end of the context: on a CPU worker at its slowest measured rate
(about 4 tokens/s for adapters under load) that is longer than the openai SDK's default 600 s
timeout, so the SDK sends the request again while the first still runs. The gateway fills in
``LORAFLEET_DEFAULT_MAX_OUTPUT_TOKENS`` (capped by the model's context) before the worst case is
reserved and the body is forwarded; ``/v1/models`` shows each model's value as ``default_max_tokens``.
``/v1/completions`` keeps OpenAI's own default of 16 tokens, made explicit the same way.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec
from lorafleet.gateway.openai.schemas import ChatCompletionRequest, CompletionRequest

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for /v1/completions

Capped = TypeVar("Capped", ChatCompletionRequest, CompletionRequest)


def default_max_tokens(setting: int, context_length: int) -> int:
    """The output cap of a model's chat and Responses requests that set none."""
    return max(1, min(setting, context_length))


def with_output_cap(request: Capped, cap: int) -> Capped:
    """``request`` with ``max_tokens`` set to ``cap`` (completions: OpenAI's 16, at most ``cap``) when it sets no cap."""
    if isinstance(request, ChatCompletionRequest):
        if request.max_tokens is None and request.max_completion_tokens is None:
            return msgspec.structs.replace(request, max_tokens=cap)
    elif request.max_tokens is None:
        return msgspec.structs.replace(request, max_tokens=min(COMPLETIONS_DEFAULT_MAX_TOKENS, cap))
    return request
