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
conversation replays (structured.py). What the engine would refuse for the request's model
(:func:`check_engine_fields`: an output cap past the context, out-of-vocabulary token ids, greedy
sampling with ``n`` > 1 …) is refused here too, before admission: such a request costs no worker call
and writes no ledger row. Batch validation runs the same functions on every line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from lorafleet.core.errors import InvalidRequest
from lorafleet.gateway.fleet.catalog import BaseModel
from lorafleet.gateway.metering.admission import Demand
from lorafleet.gateway.openai.output_cap import COMPLETIONS_DEFAULT_MAX_TOKENS
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


GREEDY_TEMPERATURE = 1e-5  # vLLM's _SAMPLING_EPS: a lower temperature is greedy sampling


def check_engine_fields(request: _Sampling, base: BaseModel, *, names: Mapping[str, str] | None = None) -> None:
    """A 400 naming the field for what the engine would refuse for ``base`` (vLLM's own checks: its
    ``SamplingParams._verify_args`` and OpenAI protocol, each case measured on the real engine in issue 28).
    Run after the output cap is filled in. ``names``: the client's names of fields a route renamed
    (the Responses API's ``max_output_tokens`` is its chat request's ``max_tokens``)."""
    def name(field: str) -> str:
        return (names or {}).get(field, field)

    def refuse(field: str, message: str, code: str = "invalid_value") -> InvalidRequest:
        return InvalidRequest(message, param=name(field), code=code)

    context = base.max_model_len
    caps = [("max_tokens", request.max_tokens)]
    if isinstance(request, ChatCompletionRequest):
        caps.insert(0, ("max_completion_tokens", request.max_completion_tokens))
    for field, value in caps:
        if value is not None and value > context:
            raise refuse(field, f"{name(field)} is {value}, more than this model's context of {context} tokens; "
                                "ask for fewer output tokens", "context_length_exceeded")
    output_cap = next((value for _, value in caps if value is not None), None)
    if output_cap is None and isinstance(request, CompletionRequest):
        output_cap = COMPLETIONS_DEFAULT_MAX_TOKENS
    if request.min_tokens is not None and output_cap is not None and request.min_tokens > output_cap:
        raise refuse("min_tokens", f"min_tokens ({request.min_tokens}) is more than the output cap ({output_cap})")
    if request.truncate_prompt_tokens is not None and request.truncate_prompt_tokens > context:
        raise refuse("truncate_prompt_tokens", f"truncate_prompt_tokens is {request.truncate_prompt_tokens}, more "
                                               f"than this model's context of {context} tokens",
                     "context_length_exceeded")
    if request.top_p is not None and request.top_p <= 0:
        raise refuse("top_p", f"{name('top_p')} must be greater than 0 (and at most 1)")
    if request.n > 1 and request.temperature is not None and request.temperature < GREEDY_TEMPERATURE:
        raise refuse("n", f"n must be 1 with greedy sampling (temperature 0), got {request.n}")
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    if any(not stop for stop in stops):
        raise refuse("stop", "stop cannot contain an empty string")
    if any(not word for word in request.bad_words or ()):
        raise refuse("bad_words", "bad_words cannot contain an empty string")
    vocabulary = base.vocab_size
    if vocabulary is not None:
        _check_vocabulary(request.stop_token_ids, vocabulary, "stop_token_ids")
        _check_vocabulary(request.allowed_token_ids, vocabulary, "allowed_token_ids")
        _check_vocabulary((int(key) for key in request.logit_bias or ()), vocabulary, "logit_bias")
    if isinstance(request, ChatCompletionRequest):
        if request.top_logprobs and not request.logprobs:
            raise refuse("top_logprobs", "top_logprobs needs logprobs: true")
        if request.add_generation_prompt and request.continue_final_message:
            raise refuse("continue_final_message", "add_generation_prompt and continue_final_message cannot both "
                                                   "be true")
    elif isinstance(request, CompletionRequest):
        _check_prompt_ids(request.prompt, "prompt", context - 1, vocabulary)


def check_embedding_fields(inputs: object, truncate_prompt_tokens: int | None, base: BaseModel) -> None:
    """What the engine would refuse of an embeddings request for ``base`` (as :func:`check_engine_fields`)."""
    context = base.max_model_len
    if truncate_prompt_tokens is not None and truncate_prompt_tokens > context:
        raise InvalidRequest(f"truncate_prompt_tokens is {truncate_prompt_tokens}, more than this model's context "
                             f"of {context} tokens", param="truncate_prompt_tokens", code="context_length_exceeded")
    _check_prompt_ids(inputs, "input", context if truncate_prompt_tokens is None else None, base.vocab_size)


def _check_vocabulary(token_ids: Iterable[int] | None, vocabulary: int, param: str) -> None:
    outside = next((token for token in token_ids or () if token >= vocabulary), None)
    if outside is not None:
        raise InvalidRequest(f"{param} holds token id {outside}, outside this model's vocabulary of {vocabulary} "
                             "tokens", param=param, code="invalid_value")


def _check_prompt_ids(prompt: object, param: str, max_tokens: int | None, vocabulary: int | None) -> None:
    """Prompts as the engine takes them: texts, one prompt of token ids, or prompts of token ids — not a
    mix; no empty prompt of token ids; none longer than ``max_tokens`` (None: any length); every id in the
    vocabulary."""
    if not isinstance(prompt, list):
        return
    kinds = {type(item) for item in prompt}
    if len(kinds) > 1:
        raise InvalidRequest(f"{param} must be one text, a list of texts, one list of token ids or a list of lists "
                             "of token ids, not a mix", param=param, code="invalid_value")
    prompts = [prompt] if kinds == {int} else prompt if kinds == {list} else []
    for index, ids in enumerate(prompts):
        where = param if kinds == {int} else f"{param}[{index}]"
        if not ids:
            raise InvalidRequest(f"{where} is empty", param=where, code="invalid_value")
        if max_tokens is not None and len(ids) > max_tokens:
            raise InvalidRequest(f"{where} has {len(ids)} tokens, more than this model's context leaves room for "
                                 f"({max_tokens})", param=where, code="context_length_exceeded")
        if vocabulary is not None:
            _check_vocabulary(ids, vocabulary, where)


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
