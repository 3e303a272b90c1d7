"""Responses input items: decoded strictly one by one, stored in one canonical form, rendered as chat messages.

The canonical items are what ``GET /v1/responses/{id}/input_items`` lists and what a later
``previous_response_id`` replays: messages (text parts only), function calls and their outputs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from lorafleet.core import ids
from lorafleet.core.errors import InvalidRequest
from lorafleet.gateway.body import invalid
from lorafleet.gateway.openai.structured import arguments_in_bounds, check_arguments
from msgspec import Meta

Text = Annotated[str, Meta(max_length=4_000_000)]
CallId = Annotated[str, Meta(min_length=1, max_length=256)]


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class InputText(_Strict, tag_field="type", tag="input_text"):
    text: Text


class OutputText(_Strict, tag_field="type", tag="output_text"):
    text: Text
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class Refusal(_Strict, tag_field="type", tag="refusal"):
    refusal: Text


class MessageItem(_Strict):
    role: Literal["user", "assistant", "system", "developer"]
    content: Text | Annotated[list[InputText | OutputText | Refusal], Meta(max_length=1024)]
    type: Literal["message"] = "message"
    id: str | None = None
    status: str | None = None


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: CallId
    name: Annotated[str, Meta(min_length=1, max_length=256)]
    arguments: Text
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: CallId
    output: Text | Annotated[list[InputText | OutputText], Meta(max_length=1024)]
    id: str | None = None
    status: str | None = None


_ITEM_TYPES: dict[str, type[_Strict]] = {"message": MessageItem, "function_call": FunctionCallItem,
                                         "function_call_output": FunctionCallOutputItem}
_UNSUPPORTED_PARTS = ("input_image", "input_file", "input_audio")


def canonical_input(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's ``input`` as canonical items (each with an id), or a 400 naming the item at fault."""
    if isinstance(value, str):
        return [_message("user", [{"type": "input_text", "text": value}])]
    return [_canonical(item, f"input[{index}]") for index, item in enumerate(value)]


def _canonical(item: dict[str, Any], where: str) -> dict[str, Any]:
    kind = item.get("type", "message")
    struct = _ITEM_TYPES.get(kind) if isinstance(kind, str) else None
    if struct is None:
        raise InvalidRequest(f"input items of type {str(kind)[:64]!r} are not supported here (supported: "
                             f"{', '.join(_ITEM_TYPES)})", param=f"{where}.type")
    for index, part in enumerate(item.get("content") if isinstance(item.get("content"), list) else ()):
        if isinstance(part, dict) and part.get("type") in _UNSUPPORTED_PARTS:
            raise InvalidRequest(f"{part['type']} parts are not supported: the models served here read text",
                                 param=f"{where}.content[{index}].type")
    try:
        decoded = msgspec.convert(item, struct)
    except msgspec.ValidationError as exc:
        error = invalid(exc)
        param = f"{where}.{error.param}" if error.param else where
        raise InvalidRequest(f"{where}: {error.message}", param=param) from None
    if isinstance(decoded, MessageItem):
        text_type = "output_text" if decoded.role == "assistant" else "input_text"
        if isinstance(decoded.content, str):
            parts = [{"type": text_type, "text": decoded.content}]
        else:
            parts = [_part(part) for part in decoded.content]
        return _message(decoded.role, parts)
    if isinstance(decoded, FunctionCallItem):
        check_arguments(decoded.arguments, f"{where}.arguments")  # vLLM parses them to render the turn
        return {"type": "function_call", "id": ids.new_id("fc"), "call_id": decoded.call_id, "name": decoded.name,
                "arguments": decoded.arguments, "status": "completed"}
    output = decoded.output if isinstance(decoded.output, str) else "".join(part.text for part in decoded.output)
    return {"type": "function_call_output", "id": ids.new_id("fco"), "call_id": decoded.call_id, "output": output,
            "status": "completed"}


def _part(part: InputText | OutputText | Refusal) -> dict[str, Any]:
    """A content part as stored and replayed: only what a chat template renders (annotations and
    logprobs a client sends back are dropped, so they cannot pad a conversation's stored history)."""
    if isinstance(part, Refusal):
        return {"type": "refusal", "refusal": part.refusal}
    if isinstance(part, OutputText):
        return {"type": "output_text", "text": part.text, "annotations": []}
    return {"type": "input_text", "text": part.text}


def _message(role: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "message", "id": ids.new_id("msg"), "role": role, "status": "completed", "content": parts}


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical items (history, then this request's input) as chat messages.

    A developer message is a system message to the chat template; consecutive function calls are one
    assistant turn with several tool calls, as chat templates expect.
    """
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            text = "".join(part.get("text") or part.get("refusal") or "" for part in item["content"])
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": text})
        elif kind == "function_call":
            # A stored call the model wrote may be cut short or nested past the bound: rendered as {}, as
            # vLLM renders arguments it cannot parse, so the conversation can go on.
            arguments = item["arguments"] if arguments_in_bounds(item["arguments"]) else "{}"
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": arguments}}
            previous = messages[-1] if messages else None
            if previous and previous["role"] == "assistant" and previous.get("tool_calls") is not None:
                previous["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages
