"""Request shapes of the OpenAI routes: every field of OpenAI's own schema, a documented allowlist of
vLLM's extras, and nothing else.

- OpenAI fields the engine serves are forwarded; OpenAI fields it does not (``store``,
  ``metadata``, ``service_tier``, ``prediction`` …) are accepted and dropped (:data:`DROPPED`), so an
  SDK that sends them works, and the request's log line names them.
- vLLM's sampling and structured-output extras (:data:`VLLM_EXTRAS`) are forwarded.
- Any other field is a 400 naming it — engine knobs (``priority``, ``kv_transfer_params``,
  ``vllm_xargs``, ``chat_template``, ``logits_processors`` …) never reach a worker.

The Structs are strict (``forbid_unknown_fields``) and encode with ``omit_defaults``: a field the
client did not send is not sent upstream either, so the engine applies its own default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from lorafleet.core.types import ModelName
from msgspec import Meta

Tokens = Annotated[int, Meta(ge=1, le=1_000_000)]
Temperature = Annotated[float, Meta(ge=0, le=2)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
Probability = Annotated[float, Meta(ge=0, le=1)]
StopSequence = Annotated[str, Meta(max_length=1000)]
Stop = StopSequence | Annotated[list[StopSequence], Meta(max_length=16)] | None
BadWords = Annotated[list[Annotated[str, Meta(max_length=256)]], Meta(max_length=128)]
# Token ids: no vocabulary served here has 10 million tokens; the engine checks the model's own size.
MAX_TOKEN_ID = 9_999_999
TokenId = Annotated[int, Meta(ge=0, le=MAX_TOKEN_ID)]
TokenIds = Annotated[list[TokenId], Meta(max_length=4096)]
StopTokenIds = Annotated[list[TokenId], Meta(max_length=256)]
TokenIdKey = Annotated[str, Meta(pattern=r"^(0|[1-9][0-9]{0,6})$")]  # a token id, as OpenAI's JSON keys carry it
LogitBias = Annotated[dict[TokenIdKey, Annotated[float, Meta(ge=-100, le=100)]], Meta(max_length=1024)]
Seed = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]  # int64, as OpenAI documents it
Choices = Annotated[int, Meta(ge=1, le=128)]
Name = Annotated[str, Meta(max_length=256)]
TemplateValue = str | int | float | bool | None


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


# ---- messages ----------------------------------------------------------------------------------

class ImageUrl(_Strict, kw_only=True):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class InputAudio(_Strict, kw_only=True):
    data: str
    format: Literal["wav", "mp3"]


class FileRef(_Strict, kw_only=True):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class TextPart(_Strict, kw_only=True, tag_field="type", tag="text"):
    text: str


class ImagePart(_Strict, kw_only=True, tag_field="type", tag="image_url"):
    image_url: ImageUrl


class AudioPart(_Strict, kw_only=True, tag_field="type", tag="input_audio"):
    input_audio: InputAudio


class FilePart(_Strict, kw_only=True, tag_field="type", tag="file"):
    file: FileRef


class RefusalPart(_Strict, kw_only=True, tag_field="type", tag="refusal"):
    refusal: str


ContentPart = TextPart | ImagePart | AudioPart | FilePart | RefusalPart
Content = str | Annotated[list[ContentPart], Meta(max_length=1024)]


class FunctionCall(_Strict, kw_only=True):
    name: Name
    arguments: str


class ToolCall(_Strict, kw_only=True, omit_defaults=False):  # vLLM requires "type"
    id: Annotated[str, Meta(max_length=256)]
    function: FunctionCall
    type: Literal["function"] = "function"


class AudioRef(_Strict, kw_only=True):
    id: str


class SystemMessage(_Strict, kw_only=True, tag_field="role", tag="system"):
    content: Content
    name: Name | None = None


class DeveloperMessage(_Strict, kw_only=True, tag_field="role", tag="developer"):
    content: Content
    name: Name | None = None


class UserMessage(_Strict, kw_only=True, tag_field="role", tag="user"):
    content: Content
    name: Name | None = None


class AssistantMessage(_Strict, kw_only=True, tag_field="role", tag="assistant"):
    content: Content | None = None
    name: Name | None = None
    refusal: str | None = None
    tool_calls: Annotated[list[ToolCall], Meta(max_length=128)] | None = None
    function_call: FunctionCall | None = None
    audio: AudioRef | None = None
    reasoning_content: str | None = None   # vLLM: a reasoning model's earlier thoughts, passed back


class ToolMessage(_Strict, kw_only=True, tag_field="role", tag="tool"):
    content: Content
    tool_call_id: Annotated[str, Meta(max_length=256)]


class FunctionMessage(_Strict, kw_only=True, tag_field="role", tag="function"):
    content: str | None
    name: Name


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage


# ---- tools and formats -------------------------------------------------------------------------

class FunctionDefinition(_Strict, kw_only=True):
    name: Name
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict, kw_only=True, omit_defaults=False):
    function: FunctionDefinition
    type: Literal["function"] = "function"


class NamedFunction(_Strict, kw_only=True):
    name: Name


class NamedToolChoice(_Strict, kw_only=True, omit_defaults=False):
    function: NamedFunction
    type: Literal["function"] = "function"


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class JsonSchemaFormat(_Strict, kw_only=True):
    name: Name
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(_Strict, kw_only=True, tag_field="type", tag="text"):
    pass


class JsonObjectFormat(_Strict, kw_only=True, tag_field="type", tag="json_object"):
    pass


class JsonSchemaResponseFormat(_Strict, kw_only=True, tag_field="type", tag="json_schema"):
    json_schema: JsonSchemaFormat


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaResponseFormat


class StreamOptions(_Strict, kw_only=True):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None   # OpenAI's; nothing to obfuscate here: dropped
    continuous_usage_stats: bool | None = None  # vLLM's: usage on every chunk


class StructuredOutputs(_Strict, kw_only=True):
    """vLLM's constrained decoding (one of them); sizes, counts and repetitions bounded in structured.py."""

    json: dict[str, Any] | str | None = None
    regex: Annotated[str, Meta(max_length=10_000)] | None = None
    choice: Annotated[list[str], Meta(max_length=1024)] | None = None
    grammar: Annotated[str, Meta(max_length=100_000)] | None = None
    json_object: bool | None = None
    structural_tag: Annotated[str, Meta(max_length=100_000)] | None = None
    whitespace_pattern: Annotated[str, Meta(max_length=1_000)] | None = None
    disable_any_whitespace: bool | None = None
    disable_additional_properties: bool | None = None


# ---- requests ----------------------------------------------------------------------------------

class _Sampling(_Strict, kw_only=True):
    """Fields both routes share: OpenAI's, then vLLM's sampling extras."""

    model: ModelName
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Tokens | None = None
    n: Choices = 1
    temperature: Temperature | None = None
    top_p: Probability | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stop: Stop = None
    seed: Seed | None = None
    user: Name | None = None
    logit_bias: LogitBias | None = None
    # vLLM extras (README "OpenAI fields and vLLM extras")
    top_k: Annotated[int, Meta(ge=-1)] | None = None
    min_p: Probability | None = None
    repetition_penalty: Annotated[float, Meta(gt=0, le=10)] | None = None
    length_penalty: float | None = None
    min_tokens: Annotated[int, Meta(ge=0)] | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    stop_token_ids: StopTokenIds | None = None
    bad_words: BadWords | None = None
    allowed_token_ids: TokenIds | None = None
    truncate_prompt_tokens: Annotated[int, Meta(ge=-1)] | None = None
    prompt_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    return_tokens_as_token_ids: bool | None = None
    return_token_ids: bool | None = None
    structured_outputs: StructuredOutputs | None = None
    add_special_tokens: bool | None = None

    @property
    def client_usage(self) -> bool:
        options = self.stream_options
        return bool(options and options.include_usage)

    @property
    def client_continuous_usage(self) -> bool:
        options = self.stream_options
        return bool(options and options.include_usage and options.continuous_usage_stats)


class ChatCompletionRequest(_Sampling, kw_only=True):
    messages: Annotated[list[Message], Meta(min_length=1, max_length=10_000)]
    max_completion_tokens: Tokens | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    tools: Annotated[list[Tool], Meta(max_length=256)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    # OpenAI fields the engine does not serve: accepted, not forwarded (DROPPED)
    store: bool | None = None
    metadata: Annotated[dict[str, Annotated[str, Meta(max_length=512)]], Meta(max_length=16)] | None = None
    service_tier: str | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    safety_identifier: Name | None = None
    prompt_cache_key: Name | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    moderation: dict[str, Any] | None = None
    functions: Annotated[list[FunctionDefinition], Meta(max_length=128)] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    # vLLM's chat extras: everything the template renders counts in the worst case (openai/bounds.py)
    echo: bool | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    documents: Annotated[list[dict[str, str]], Meta(max_length=1024)] | None = None
    chat_template_kwargs: Annotated[dict[str, TemplateValue], Meta(max_length=32)] | None = None
    include_reasoning: bool | None = None
    thinking_token_budget: Annotated[int, Meta(ge=0)] | None = None


# msgspec allows one array-like type per union, so a batch or token-id prompt is one list type;
# the engine rejects mixed lists with its own 400.
Prompt = Annotated[str, Meta(min_length=1)] | Annotated[list[str | TokenId | list[TokenId]], Meta(min_length=1)]


class CompletionRequest(_Sampling, kw_only=True):
    prompt: Prompt
    echo: bool | None = None
    logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    suffix: str | None = None    # not served by the engine: dropped
    best_of: Annotated[int, Meta(ge=1, le=20)] | None = None  # not served by vLLM v1: dropped


# Per route: OpenAI fields accepted from clients and not forwarded to the engine.
DROPPED: dict[type[_Sampling], tuple[str, ...]] = {
    ChatCompletionRequest: ("store", "metadata", "service_tier", "modalities", "audio", "prediction",
                            "web_search_options", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
                            "prompt_cache_options", "verbosity", "moderation", "functions", "function_call"),
    CompletionRequest: ("suffix", "best_of"),
}
VLLM_EXTRAS = tuple(name for name in _Sampling.__struct_fields__ if name not in {
    "model", "stream", "stream_options", "max_tokens", "n", "temperature", "top_p", "presence_penalty",
    "frequency_penalty", "stop", "seed", "user", "logit_bias"}) + (
    "echo", "add_generation_prompt", "continue_final_message", "documents", "chat_template_kwargs",
    "include_reasoning", "thinking_token_budget")


# What a completion answers, for the OpenAPI document (the body itself is the engine's, relayed):
# the fields every answer has; others (logprobs, usage details, vLLM's extras) may come too.

class CompletionUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionChoice(msgspec.Struct, kw_only=True):
    index: int
    message: dict[str, Any]
    finish_reason: str | None


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage


class TextCompletionChoice(msgspec.Struct, kw_only=True):
    index: int
    text: str
    finish_reason: str | None


class TextCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextCompletionChoice]
    usage: CompletionUsage
