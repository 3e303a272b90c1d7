"""The default output cap: filled in only when a request sets none, never above the model's context."""

from __future__ import annotations

import msgspec
from lorafleet.gateway.openai.output_cap import COMPLETIONS_DEFAULT_MAX_TOKENS, default_max_tokens, with_output_cap
from lorafleet.gateway.openai.schemas import ChatCompletionRequest, CompletionRequest

MESSAGES = [{"role": "user", "content": "hi"}]


def _chat(**fields) -> ChatCompletionRequest:
    return msgspec.convert({"model": "m", "messages": MESSAGES, **fields}, ChatCompletionRequest)


def _completion(**fields) -> CompletionRequest:
    return msgspec.convert({"model": "m", "prompt": "hi", **fields}, CompletionRequest)


def test_the_cap_is_the_setting_within_the_context():
    assert default_max_tokens(1024, 4096) == 1024
    assert default_max_tokens(1024, 512) == 512


def test_a_chat_request_without_a_cap_gets_the_default_and_one_with_a_cap_keeps_it():
    assert with_output_cap(_chat(), 1024).max_tokens == 1024
    assert with_output_cap(_chat(max_tokens=3000), 1024).max_tokens == 3000
    capped = with_output_cap(_chat(max_completion_tokens=9), 1024)
    assert (capped.max_tokens, capped.max_completion_tokens) == (None, 9)


def test_completions_keep_openais_default_of_16_within_the_cap():
    assert with_output_cap(_completion(), 1024).max_tokens == COMPLETIONS_DEFAULT_MAX_TOKENS == 16
    assert with_output_cap(_completion(), 8).max_tokens == 8
    assert with_output_cap(_completion(max_tokens=200), 8).max_tokens == 200
