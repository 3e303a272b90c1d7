"""What each inference route checks of a request before it is admitted — shared by the routes and by batch
validation (gateway/batches/validation.py), so a batch line is refused at validation exactly as the same
synchronous request would be, and never costs a worker call or a ledger row.

Per route, in the route's order: :func:`before_model` (what needs no model: structured-output budgets,
unsupported fields), then, once the model is resolved, :func:`with_model` — the task, the output cap
filled in, what the engine would refuse for that model (openai/bounds.py), the worst case and fan-out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from lorafleet.core.errors import InvalidRequest
from lorafleet.core.settings import GatewaySettings
from lorafleet.gateway.embeddings.schemas import EmbeddingRequest
from lorafleet.gateway.fleet.catalog import ResolvedModel, require_task
from lorafleet.gateway.metering.admission import Demand
from lorafleet.gateway.openai.bounds import (
    chat_demand,
    check_chat,
    check_completion,
    check_embedding_fields,
    check_engine_fields,
    completion_demand,
    embedding_demand,
)
from lorafleet.gateway.openai.output_cap import default_max_tokens, with_output_cap
from lorafleet.gateway.openai.schemas import ChatCompletionRequest, CompletionRequest
from lorafleet.gateway.responses_api.bridge import chat_request, check_structured, function_tools, refuse_unsupported
from lorafleet.gateway.responses_api.items import canonical_input
from lorafleet.gateway.responses_api.schemas import FunctionTool, ResponseCreateRequest

_encode = msgspec.json.Encoder().encode
RESPONSES_NAMES = {"max_tokens": "max_output_tokens"}  # the chat turn's fields, as a Responses client named them


@dataclass(frozen=True, slots=True)
class ResponsesInput:
    """What the Responses route reads of a request before its model: its tools and canonical input items."""

    tools: list[FunctionTool] | None
    items: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request ready for admission: as it goes upstream (output cap filled in), and its worst case."""

    request: Any
    demand: Demand


def before_model(request: Any) -> ResponsesInput | None:
    """The route's checks that need no model (a 400 naming the field); the Responses route's input, read."""
    if isinstance(request, ChatCompletionRequest):
        check_chat(request)
    elif isinstance(request, CompletionRequest):
        check_completion(request)
    elif isinstance(request, ResponseCreateRequest):
        refuse_unsupported(request)
        tools = function_tools(request.tools)
        check_structured(request, tools)
        return ResponsesInput(tools, canonical_input(request.input))
    return None


def chat(request: ChatCompletionRequest, body_bytes: int, resolved: ResolvedModel,
         settings: GatewaySettings) -> Prepared:
    base = resolved.base
    request = with_output_cap(request, default_max_tokens(settings.default_max_output_tokens, base.max_model_len))
    check_engine_fields(request, base)
    return Prepared(request, chat_demand(request, body_bytes, base.max_model_len,
                                         max_sequences=settings.max_sequences_per_request))


def completion(request: CompletionRequest, resolved: ResolvedModel, settings: GatewaySettings) -> Prepared:
    base = resolved.base
    request = with_output_cap(request, default_max_tokens(settings.default_max_output_tokens, base.max_model_len))
    check_engine_fields(request, base)
    return Prepared(request, completion_demand(request, base.max_model_len,
                                               max_prompts=settings.max_prompts_per_request,
                                               max_sequences=settings.max_sequences_per_request))


def embedding(request: EmbeddingRequest, resolved: ResolvedModel, settings: GatewaySettings) -> Prepared:
    require_task(resolved, "embed", request.model)
    if resolved.adapter_id is not None:
        raise InvalidRequest("adapters are not served for embeddings; name the embedding base model",
                             param="model", code="unsupported_model")
    check_embedding_fields(request.input, request.truncate_prompt_tokens, resolved.base)
    return Prepared(request, embedding_demand(request.input, resolved.base.max_model_len,
                                              max_inputs=settings.max_prompts_per_request))


def response_turn(request: ResponseCreateRequest, read: ResponsesInput, resolved: ResolvedModel,
                  settings: GatewaySettings, *, history_bound: int = 0) -> Prepared:
    """The chat request that serves this turn (without the chain it continues: ``history_bound`` bounds
    what that adds), checked and bounded as a chat request."""
    max_model_len = resolved.base.max_model_len
    cap = default_max_tokens(settings.default_max_output_tokens, max_model_len)
    turn = with_output_cap(chat_request(request, read.items, read.tools), cap)
    check_engine_fields(turn, resolved.base, names=RESPONSES_NAMES)
    return Prepared(turn, chat_demand(turn, len(_encode(turn)) + history_bound, max_model_len,
                                      max_sequences=settings.max_sequences_per_request))


def with_model(request: Any, body_bytes: int, read: ResponsesInput | None, resolved: ResolvedModel,
               settings: GatewaySettings) -> Prepared:
    """:func:`chat`, :func:`completion`, :func:`embedding` or :func:`response_turn`, by the request's type."""
    if isinstance(request, ChatCompletionRequest):
        return chat(request, body_bytes, resolved, settings)
    if isinstance(request, CompletionRequest):
        return completion(request, resolved, settings)
    if isinstance(request, EmbeddingRequest):
        return embedding(request, resolved, settings)
    assert isinstance(request, ResponseCreateRequest) and read is not None
    return response_turn(request, read, resolved, settings)
