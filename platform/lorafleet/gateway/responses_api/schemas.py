"""What ``POST /v1/responses`` accepts: OpenAI's Responses request, for text and function tools.

Served on top of chat completions (bridge.py), so every field maps onto one the engine serves.
Fields OpenAI has that cannot be served here are refused by name, never silently ignored: other
tool types (web search, file search, computer use …), ``background``, ``conversation``, ``prompt``
templates, image and file inputs. ``reasoning``, ``service_tier``, ``safety_identifier``,
``prompt_cache_key`` and ``include`` are accepted and have no effect (as on chat).

Input items are decoded one by one (items.py): an SDK's plain ``{"role", "content"}`` message has
no ``type`` to tag a union with.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from lorafleet.core.types import ModelName
from lorafleet.gateway.openai.schemas import JsonObjectFormat, Name, Probability, Temperature, TextFormat, Tokens
from msgspec import Meta

MAX_INPUT_ITEMS = 10_000
ResponseId = Annotated[str, Meta(pattern=r"^resp_[A-Za-z0-9]{1,64}$")]


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


class FunctionTool(_Strict, kw_only=True):
    type: Literal["function"]
    name: Name
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunctionChoice(_Strict, kw_only=True):
    type: Literal["function"]
    name: Name


class TextFormatJsonSchema(_Strict, kw_only=True, tag_field="type", tag="json_schema"):
    name: Name
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


class TextOptions(_Strict, kw_only=True):
    format: TextFormat | JsonObjectFormat | TextFormatJsonSchema | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(_Strict, kw_only=True):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class StreamOptions(_Strict, kw_only=True):
    include_obfuscation: bool | None = None


class ResponseCreateRequest(_Strict, kw_only=True):
    model: ModelName
    input: Annotated[str, Meta(min_length=1)] | Annotated[list[dict[str, Any]], Meta(min_length=1, max_length=MAX_INPUT_ITEMS)]
    instructions: str | None = None
    previous_response_id: ResponseId | None = None
    store: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_output_tokens: Tokens | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    tools: Annotated[list[dict[str, Any]], Meta(max_length=256)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    metadata: Annotated[dict[str, Annotated[str, Meta(max_length=512)]], Meta(max_length=16)] | None = None
    user: Name | None = None
    truncation: Literal["disabled"] | None = None
    # Accepted, no effect here (the engine has nothing to do with them):
    include: Annotated[list[str], Meta(max_length=16)] | None = None
    reasoning: Reasoning | None = None
    service_tier: str | None = None
    safety_identifier: Name | None = None
    prompt_cache_key: Name | None = None
    # OpenAI features this gateway does not serve: named in a 400 (bridge.refuse_unsupported).
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    max_tool_calls: int | None = None
    top_logprobs: int | None = None


# ---- what it answers, for the OpenAPI document ---------------------------------------------------

class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens_details: dict[str, int]
    # The exact cost as decimal micro-USD text ("0.1"), never rounded (billing/pricing.py); responses
    # stored before migration 0012 hold an integer.
    cost_micro_usd: str | int | None = None


class ResponseObject(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    model: str
    output: list[dict[str, Any]]
    usage: ResponseUsage | None = None


class DeletedResponse(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputItemList(msgspec.Struct, kw_only=True):
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"
