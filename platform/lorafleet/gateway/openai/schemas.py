"""Request shapes of the OpenAI routes, validated before anything reaches a worker.

These are the exception to strictness: clients send fields we do not model (vLLM extras such
as ``top_k``), so unknown fields pass through to the engine and are logged by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

ModelName = Annotated[str, Meta(min_length=1, max_length=256)]
PositiveTokens = Annotated[int, Meta(ge=1)]
Temperature = Annotated[float, Meta(ge=0, le=2)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
Stop = str | Annotated[list[str], Meta(max_length=16)] | None


class StreamOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class ChatMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class SamplingFields(msgspec.Struct, kw_only=True):
    model: ModelName
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveTokens | None = None
    n: Annotated[int, Meta(ge=1, le=16)] = 1
    temperature: Temperature | None = None
    top_p: Annotated[float, Meta(gt=0, le=1)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stop: Stop = None
    seed: int | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_completion_tokens: PositiveTokens | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None


# msgspec allows one array-like type per union, so a batch or token-id prompt is one list type;
# the engine rejects mixed lists with its own 400.
Prompt = Annotated[str, Meta(min_length=1)] | Annotated[list[str | int | list[int]], Meta(min_length=1)]


class CompletionRequest(SamplingFields, kw_only=True):
    prompt: Prompt
    echo: bool | None = None
    logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    suffix: str | None = None


def known_fields(struct: type[msgspec.Struct]) -> frozenset[str]:
    return frozenset(struct.__struct_fields__)
