"""Validation of a fine-tuning JSONL file, line by line, with the served model's tokenizer and template.

Each line is one example: ``{"messages": [{"role", "content", "weight"?}, ...], "tools"?,
"parallel_tool_calls"?}`` (OpenAI's chat format; ``weight`` 0/1 on assistant messages; assistant
``tool_calls`` and ``tool`` messages answering them by ``tool_call_id``) or ``{"prompt", "completion"}``. The file is read a
line at a time with a byte budget per line and per file, so memory never grows with the file.

Every refusal is a :class:`TrainingFileInvalid` naming the line (``"line 61: role 'wizard' is not
one of system, user, assistant"``) with an OpenAI-style ``code`` and ``param="training_file"`` (or
``validation_file``), ready to become a job's ``error``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet.core.errors import InvalidRequest
from lorafleet.trainer.render import (
    ChatExample,
    CompletionExample,
    Example,
    Message,
    Rendered,
    Renderer,
    TemplateMismatch,
    ToolCall,
    TooLong,
)

ROLES = ("system", "user", "assistant", "tool")
MAX_TOOLS, MAX_TOOL_CALLS = 128, 32  # per line, per assistant message
MAX_MESSAGES = 256  # per example: each assistant turn renders its prefix, so turns bound the work per line
MAX_JSON_DEPTH = 64  # a line's nesting: the chat format needs 3; json.loads recurses per level
MESSAGE_KEYS = {"system": frozenset({"role", "content"}), "user": frozenset({"role", "content"}),
                "assistant": frozenset({"role", "content", "weight", "tool_calls"}),
                "tool": frozenset({"role", "content", "tool_call_id"})}
CLIP = 60  # characters of an uploader-chosen value a message shows


class TrainingFileInvalid(InvalidRequest):
    """A training or validation file refused; ``line`` is 1-based, None for the file as a whole."""

    default_code = "invalid_file_format"

    def __init__(self, message: str, *, line: int | None = None, code: str | None = None,
                 param: str = "training_file") -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message, param=param, code=code)
        self.line = line


@dataclass(frozen=True)
class Limits:
    min_examples: int = 10  # OpenAI's minimum (invalid_n_examples)
    max_example_tokens: int = 2048  # the workers' default max_model_len
    max_total_tokens: int = 5_000_000  # one epoch of the file
    max_line_bytes: int = 1 << 20
    max_file_bytes: int = 256 << 20
    max_seconds: float = 0.0  # a file's validation time budget (0: none); past it the file is refused


@dataclass(frozen=True)
class Summary:
    n_examples: int
    total_tokens: int  # every token of every example, one epoch
    trained_positions: int  # tokens in the loss, one epoch
    longest_example_tokens: int


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= CLIP else text[: CLIP - 1] + "…"


def read_lines(path: Path, limits: Limits, param: str = "training_file") -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line, within the byte budgets."""
    total = 0
    with open(path, "rb") as handle:
        number = 0
        while True:
            raw = handle.readline(limits.max_line_bytes + 1)
            if not raw:
                return
            number += 1
            total += len(raw)
            if total > limits.max_file_bytes:
                raise TrainingFileInvalid(f"the file is larger than {limits.max_file_bytes} bytes",
                                          code="file_too_large", param=param)
            if len(raw.rstrip(b"\r\n")) > limits.max_line_bytes:
                raise TrainingFileInvalid(f"longer than {limits.max_line_bytes} bytes", line=number,
                                          code="line_too_long", param=param)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise TrainingFileInvalid("not UTF-8 text", line=number, param=param) from None
            if text.strip():
                yield number, text


def parse_example(text: str, line: int, param: str = "training_file") -> Example:
    """One line's example, its shape checked (no tokenizer needed)."""
    def fail(message: str) -> TrainingFileInvalid:
        return TrainingFileInvalid(message, line=line, param=param)

    brackets = text.count("[") + text.count("{")  # counted in C: most lines never need the scan below
    depth = _nesting(text) if brackets > MAX_JSON_DEPTH else brackets
    if depth > MAX_JSON_DEPTH:  # refused before json.loads, which would recurse once per level
        raise fail(f"nested {depth} levels deep; at most {MAX_JSON_DEPTH} are allowed")
    try:
        data = json.loads(text)
    except RecursionError:
        raise fail(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as exc:
        raise fail(f"not valid JSON ({exc.args[0].split(':')[0]})") from None
    if not isinstance(data, dict):
        raise fail("expected a JSON object with `messages`, or `prompt` and `completion`")
    if "messages" in data:
        extra = sorted(set(data) - {"messages", "tools", "parallel_tool_calls"})
        if extra:
            raise fail("unsupported key 'functions' (deprecated by OpenAI): use `tools`" if extra[0] == "functions"
                       else f"unexpected key {_shown(extra[0])} next to `messages`")
        if "parallel_tool_calls" in data and not isinstance(data["parallel_tool_calls"], bool):
            raise fail("`parallel_tool_calls` must be true or false")
        return ChatExample(_messages(data["messages"], fail), _tools(data.get("tools"), fail))
    if set(data) == {"prompt", "completion"}:
        prompt, completion = data["prompt"], data["completion"]
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise fail("`prompt` and `completion` must be strings")
        _text_ok(prompt, "`prompt`", fail)
        _text_ok(completion, "`completion`", fail)
        if not completion:
            raise fail("`completion` is empty")
        return CompletionExample(prompt, completion)
    raise fail("expected `messages`, or `prompt` and `completion`")


def _nesting(text: str) -> int:
    """The deepest bracket nesting of a JSON text, brackets inside strings left out: linear, no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def _text_ok(value: str, where: str, fail: Any) -> str:
    """A JSON string may carry a lone UTF-16 surrogate (``"\\ud800"``): valid JSON, but no text a tokenizer can
    encode; refused here with its line instead of crashing the tokenizer."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise fail(f"{where} holds a lone surrogate (an unpaired \\ud800-\\udfff escape): not text") from None
    return value


def _tools(value: Any, fail: Any) -> tuple[dict[str, Any], ...]:
    """OpenAI's ``tools``: function definitions, rendered into the prompt exactly as a request's."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise fail(f"`tools` must be a list of at most {MAX_TOOLS} tools")
    for index, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise fail(f"tools[{index}] must be {{\"type\": \"function\", \"function\": {{\"name\", ...}}}}")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise fail(f"tools[{index}].function.name must be a non-empty string")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise fail(f"tools[{index}].function.parameters must be a JSON schema object")
        _text_ok(json.dumps(tool, ensure_ascii=False), f"tools[{index}]", fail)
    return tuple(value)


def _tool_calls(value: Any, where: str, fail: Any) -> tuple[ToolCall, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_TOOL_CALLS:
        raise fail(f"{where}.tool_calls must be a list of 1 to {MAX_TOOL_CALLS} calls")
    calls = []
    for index, call in enumerate(value):
        at = f"{where}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or call.get("type", "function") != "function" or not isinstance(function, dict):
            raise fail(f"{at} must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}")
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise fail(f"{at}.id must be a non-empty string")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise fail(f"{at}.function.name must be a non-empty string")
        arguments = function.get("arguments")
        try:
            decoded = json.loads(arguments) if isinstance(arguments, str) else None
        except ValueError:
            decoded = None
        if not isinstance(decoded, dict):
            raise fail(f"{at}.function.arguments must be a string holding a JSON object")
        assert isinstance(arguments, str)  # it decoded to an object above
        _text_ok(arguments, f"{at}.function.arguments", fail)
        calls.append(ToolCall(call["id"], _text_ok(function["name"], f"{at}.function.name", fail), arguments))
    return tuple(calls)


def _messages(value: Any, fail: Any) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise fail("`messages` must be a non-empty list")
    if len(value) > MAX_MESSAGES:
        raise fail(f"{len(value)} messages; at most {MAX_MESSAGES} are allowed in one example")
    messages: list[Message] = []
    for index, item in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise fail(f"{where} must be an object with `role` and `content`")
        role = item.get("role")
        if "function_call" in item or role == "function":
            raise fail(f"{where}: `function_call` and role 'function' are deprecated by OpenAI; use `tool_calls` "
                       "and role 'tool'")
        if role not in ROLES:
            raise fail(f"role {_shown(role)} is not one of {', '.join(ROLES)}" if isinstance(role, str)
                       else f"{where}.role is missing or not a string")
        extra = sorted(set(item) - MESSAGE_KEYS[role])
        if extra:
            if extra[0] == "weight":
                raise fail(f"{where}: `weight` is only allowed on assistant messages")
            raise fail(f"{where} has unexpected key {_shown(extra[0])}")
        calls = _tool_calls(item["tool_calls"], where, fail) if "tool_calls" in item else ()
        content = item.get("content")
        if not isinstance(content, str) and not (calls and content is None):
            raise fail(f"{where}.content must be a string" + (" (or null beside tool_calls)" if role == "assistant"
                                                               else ""))
        if content is not None:
            _text_ok(content, f"{where}.content", fail)
        call_id = None
        if role == "tool":
            call_id = item.get("tool_call_id")
            asked = {call.id for m in messages for call in m.tool_calls}
            if not isinstance(call_id, str) or call_id not in asked:
                raise fail(f"{where}.tool_call_id must name a call of an earlier assistant message")
        weight = item.get("weight", 1)
        if type(weight) is not int or weight not in (0, 1):
            raise fail(f"{where}.weight must be 0 or 1, not {_shown(weight)}")
        messages.append(Message(role, content, weight, calls, call_id))
    if messages[0].role == "assistant":
        raise fail("the conversation starts with an assistant message; start with a system or user message")
    if not any(m.role == "assistant" for m in messages):
        raise fail("no assistant message: at least one is needed to train on")
    if not any(m.role == "assistant" and m.weight for m in messages):
        raise fail("every assistant message has weight 0: nothing to train on")
    return tuple(messages)


def iter_rendered(path: Path, renderer: Renderer, limits: Limits = Limits(), *, train_on_inputs: bool = False,
                  param: str = "training_file") -> Iterator[tuple[int, Rendered]]:
    """(line, rendered example) for every example, each checked against the per-example limit."""
    deadline = time.monotonic() + limits.max_seconds if limits.max_seconds else None
    for line, text in read_lines(path, limits, param):
        if deadline is not None and time.monotonic() > deadline:
            raise TrainingFileInvalid(f"checking the file took more than {limits.max_seconds:g} seconds (reached "
                                      f"line {line}); split it or shorten its examples", line=line,
                                      code="validation_timeout", param=param)
        example = parse_example(text, line, param)
        try:
            rendered = renderer.render(example, train_on_inputs=train_on_inputs,
                                       max_tokens=limits.max_example_tokens)
        except TemplateMismatch as exc:
            raise TrainingFileInvalid(str(exc), line=line, param=param) from None
        except TooLong as exc:
            raise TrainingFileInvalid(
                f"the example has over {exc.tokens} tokens by {exc.where}; the limit is {limits.max_example_tokens}",
                line=line, code="example_too_long", param=param) from None
        except (ValueError, TypeError, RecursionError, OverflowError, UnicodeError) as exc:
            # Whatever the tokenizer or template cannot take is this line's fault, never a crash of the
            # validator (a crash is retried, then ends as validation_attempts_exhausted, no line named).
            raise TrainingFileInvalid(f"the example cannot be rendered ({type(exc).__name__}: {str(exc)[:120]})",
                                      line=line, param=param) from None
        if len(rendered.input_ids) > limits.max_example_tokens:
            raise TrainingFileInvalid(
                f"the example has {len(rendered.input_ids)} tokens; the limit is {limits.max_example_tokens}",
                line=line, code="example_too_long", param=param)
        yield line, rendered


def _check_totals(count: int, total: int, limits: Limits, param: str) -> None:
    if total > limits.max_total_tokens:
        raise TrainingFileInvalid(f"the file has more than {limits.max_total_tokens} tokens",
                                  code="too_many_tokens", param=param)
    if count == 0:
        raise TrainingFileInvalid("the file is empty: no examples", code="invalid_n_examples", param=param)
    if count < limits.min_examples:
        raise TrainingFileInvalid(f"the file has {count} examples; at least {limits.min_examples} are needed",
                                  code="invalid_n_examples", param=param)


def validate_file(path: Path, renderer: Renderer, limits: Limits = Limits(), *, train_on_inputs: bool = False,
                  param: str = "training_file") -> Summary:
    """Check the whole file, keeping nothing but counts; the first fault raises :class:`TrainingFileInvalid`."""
    count = total = trained = longest = 0
    for _, rendered in iter_rendered(path, renderer, limits, train_on_inputs=train_on_inputs, param=param):
        count += 1
        total += len(rendered.input_ids)
        trained += rendered.trained_positions
        longest = max(longest, len(rendered.input_ids))
        if total > limits.max_total_tokens:
            _check_totals(count, total, limits, param)
    _check_totals(count, total, limits, param)
    return Summary(count, total, trained, longest)


def load_examples(path: Path, renderer: Renderer, limits: Limits = Limits(), *, train_on_inputs: bool = False,
                  param: str = "training_file") -> list[Rendered]:
    """Every example rendered, for training (bounded in memory by ``limits.max_total_tokens``)."""
    examples: list[Rendered] = []
    total = 0
    for _, rendered in iter_rendered(path, renderer, limits, train_on_inputs=train_on_inputs, param=param):
        examples.append(rendered)
        total += len(rendered.input_ids)
        if total > limits.max_total_tokens:
            _check_totals(len(examples), total, limits, param)
    _check_totals(len(examples), total, limits, param)
    return examples
