"""The most a request can use, before it runs: for budget reservations, tokens/min limits and fan-out caps.

The gateway does not tokenize. Every token of a byte-level BPE (or SentencePiece with byte
fallback) vocabulary covers at least one byte of text, so a prompt has at most as many tokens as
its UTF-8 bytes. For chat, the bound is the whole request body's size: everything the chat
template renders — messages, tools, documents, response format, template arguments — is in the
body, JSON-escaped (so never shorter than rendered), and the template's own per-message tokens
are outnumbered by the JSON around each message. ``TEMPLATE_ALLOWANCE`` covers what a template adds
on its own (a default system prompt, the generation prompt, tool-use instructions).

Fan-out is bounded too: at most ``max_prompts`` prompts per request and ``max_sequences``
sequences (prompts × ``n``).

What steers the engine is bounded before it is admitted (:func:`check_chat`, :func:`check_completion`):
every schema, regex, grammar and choice of a request against one budget, and every tool call a
conversation replays (structured.py).
"""

from __future__ import annotations

from lorafleet.core.errors import InvalidRequest
from lorafleet.gateway.metering.admission import Demand
from lorafleet.gateway.openai.schemas import (
    AssistantMessage,
    ChatCompletionRequest,
    CompletionRequest,
    JsonSchemaResponseFormat,
    StructuredOutputs,
    _Sampling,
)
from lorafleet.gateway.openai.structured import StructuredBudget, check_arguments

TEMPLATE_ALLOWANCE = 64
TOOLS_ALLOWANCE = 1024  # tool-use instructions some templates add when tools are present


def check_chat(request: ChatCompletionRequest) -> None:
    """A 400 naming the field if a schema, pattern, grammar or replayed tool call is out of bounds."""
    budget = _check_sampling(request)
    response_format = request.response_format
    if isinstance(response_format, JsonSchemaResponseFormat) and response_format.json_schema.schema is not None:
        budget.schema(response_format.json_schema.schema, "response_format.json_schema.schema")
    for index, tool in enumerate(request.tools or ()):
        if tool.function.parameters is not None:
            budget.schema(tool.function.parameters, f"tools[{index}].function.parameters")
    for index, message in enumerate(request.messages):
        if not isinstance(message, AssistantMessage):
            continue
        for position, call in enumerate(message.tool_calls or ()):
            check_arguments(call.function.arguments, f"messages[{index}].tool_calls[{position}].function.arguments")
        if message.function_call is not None:
            check_arguments(message.function_call.arguments, f"messages[{index}].function_call.arguments")


def check_completion(request: CompletionRequest) -> None:
    _check_sampling(request)


def _check_sampling(request: _Sampling) -> StructuredBudget:
    budget = StructuredBudget()
    if request.structured_outputs is not None:
        check_structured_outputs(request.structured_outputs, budget)
    return budget


def check_structured_outputs(outputs: StructuredOutputs, budget: StructuredBudget,
                             param: str = "structured_outputs") -> None:
    if isinstance(outputs.json, str):
        budget.schema_text(outputs.json, f"{param}.json")
    elif outputs.json is not None:
        budget.schema(outputs.json, f"{param}.json")
    if outputs.regex is not None:
        budget.regex(outputs.regex, f"{param}.regex")
    if outputs.choice is not None:
        budget.choice(outputs.choice, f"{param}.choice")
    if outputs.grammar is not None:
        budget.grammar(outputs.grammar, f"{param}.grammar")
    if outputs.structural_tag is not None:
        budget.structural_tag(outputs.structural_tag, f"{param}.structural_tag")
    if outputs.whitespace_pattern is not None:
        budget.regex(outputs.whitespace_pattern, f"{param}.whitespace_pattern")


def chat_demand(request: ChatCompletionRequest, body_bytes: int, context_length: int, *, max_sequences: int) -> Demand:
    prompt = body_bytes + TEMPLATE_ALLOWANCE + (TOOLS_ALLOWANCE if request.tools else 0)
    prompt = min(prompt, context_length)  # a longer prompt is refused by the engine, unbilled
    requested = request.max_completion_tokens or request.max_tokens
    _check_fan_out(1, request.n, max_prompts=1, max_sequences=max_sequences)
    per_choice = min(requested or context_length, context_length)
    return Demand(prompt_tokens=prompt, completion_tokens=per_choice * request.n, sequences=request.n,
                  context_length=context_length)


def completion_demand(request: CompletionRequest, context_length: int, *, max_prompts: int,
                      max_sequences: int) -> Demand:
    prompt, prompts = _completion_prompt_bound(request.prompt, context_length)
    _check_fan_out(prompts, request.n, max_prompts=max_prompts, max_sequences=max_sequences)
    per_choice = min(request.max_tokens or context_length, context_length)
    sequences = prompts * request.n
    return Demand(prompt_tokens=prompt, completion_tokens=per_choice * sequences, sequences=sequences,
                  context_length=context_length)


def embedding_demand(inputs: object, context_length: int, *, max_inputs: int) -> Demand:
    """Inputs are bounded like prompts (each by its bytes, or exactly as token ids); nothing is generated."""
    prompt, count = _completion_prompt_bound(inputs, context_length)
    if count > max_inputs:
        raise InvalidRequest(f"at most {max_inputs} inputs per request (got {count}); split the batch",
                             param="input", code="too_many_inputs")
    return Demand(prompt_tokens=prompt, completion_tokens=0, sequences=count, context_length=context_length)


def _check_fan_out(prompts: int, n: int, *, max_prompts: int, max_sequences: int) -> None:
    if prompts > max_prompts:
        raise InvalidRequest(f"at most {max_prompts} prompts per request (got {prompts}); split the batch",
                             param="prompt", code="too_many_prompts")
    if prompts * n > max_sequences:
        raise InvalidRequest(f"this request asks for {prompts * n} sequences ({prompts} prompts × n={n}); at most "
                             f"{max_sequences} per request", param="n", code="too_many_sequences")


def _completion_prompt_bound(prompt: object, context_length: int) -> tuple[int, int]:
    """(token bound over all prompts, number of prompts); each prompt is also capped by the context."""
    if isinstance(prompt, str):
        return min(len(prompt.encode()) + TEMPLATE_ALLOWANCE, context_length), 1
    assert isinstance(prompt, list)
    if prompt and all(isinstance(item, int) for item in prompt):
        return min(len(prompt), context_length), 1  # one prompt as token ids: exact
    total = 0
    for item in prompt:
        size = len(item) if isinstance(item, list) else len(str(item).encode()) + TEMPLATE_ALLOWANCE
        total += min(size, context_length)
    return total, len(prompt)
