"""The Responses API on top of chat completions: a request becomes a chat request, and the chat answer
(whole, or chunk by chunk) becomes a Response object and its typed stream events.

Going through chat keeps one request path: the same routing, admission, metering, failover and
adapters as ``/v1/chat/completions``, on any worker, with conversation state in PostgreSQL (so
``previous_response_id`` works whichever gateway and worker served the earlier turn).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from lorafleet.core import ids
from lorafleet.core.errors import InvalidRequest
from lorafleet.gateway.body import invalid
from lorafleet.gateway.openai.schemas import ChatCompletionRequest
from lorafleet.gateway.openai.structured import StructuredBudget
from lorafleet.gateway.responses_api.items import chat_messages
from lorafleet.gateway.responses_api.schemas import FunctionTool, ResponseCreateRequest, TextFormatJsonSchema

_encode = msgspec.json.Encoder().encode

UNSUPPORTED = {
    "background": "background responses are not supported; send the request and wait (or stream)",
    "conversation": "conversation objects are not supported; chain turns with previous_response_id",
    "prompt": "stored prompt templates are not supported; send instructions and input",
    "max_tool_calls": "max_tool_calls is not supported; tools are called by the client",
    "top_logprobs": "top_logprobs is not supported on /v1/responses; use /v1/chat/completions",
}


def refuse_unsupported(request: ResponseCreateRequest) -> None:
    for name, reason in UNSUPPORTED.items():
        value = getattr(request, name)
        if value is not None and value is not False:
            raise InvalidRequest(reason, param=name, code="unsupported_parameter")


def function_tools(tools: list[dict[str, Any]] | None) -> list[FunctionTool] | None:
    if tools is None:
        return None
    decoded = []
    for index, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise InvalidRequest(f"tools of type {str(tool.get('type'))[:64]!r} are not supported here; function "
                                 "tools are (the client runs them)", param=f"tools[{index}].type",
                                 code="unsupported_parameter")
        try:
            decoded.append(msgspec.convert(tool, FunctionTool))
        except msgspec.ValidationError as exc:
            error = invalid(exc)
            raise InvalidRequest(f"tools[{index}]: {error.message}",
                                 param=f"tools[{index}].{error.param}" if error.param else f"tools[{index}]") from None
    return decoded


def check_structured(request: ResponseCreateRequest, tools: list[FunctionTool] | None) -> None:
    """The response's JSON schema and its tools' parameters, against one budget (structured.py)."""
    budget = StructuredBudget()
    text_format = request.text.format if request.text else None
    if isinstance(text_format, TextFormatJsonSchema):
        budget.schema(text_format.schema, "text.format.schema")
    for index, tool in enumerate(tools or ()):
        if tool.parameters is not None:
            budget.schema(tool.parameters, f"tools[{index}].parameters")


def chat_request(request: ResponseCreateRequest, items: list[dict[str, Any]],
                 tools: list[FunctionTool] | None) -> ChatCompletionRequest:
    """The chat request that serves this response: instructions, then the conversation so far, then the input."""
    messages = chat_messages(items)
    if request.instructions:
        messages.insert(0, {"role": "system", "content": request.instructions})
    chat: dict[str, Any] = {"model": request.model, "messages": messages, "stream": request.stream}
    for name in ("temperature", "top_p", "user", "parallel_tool_calls"):
        if getattr(request, name) is not None:
            chat[name] = getattr(request, name)
    if request.max_output_tokens is not None:
        chat["max_tokens"] = request.max_output_tokens
    if tools:
        chat["tools"] = [{"type": "function", "function": {key: value for key, value in msgspec.to_builtins(tool).items()
                                                            if key != "type"}} for tool in tools]
    if request.tool_choice is not None:
        choice = request.tool_choice
        chat["tool_choice"] = choice if isinstance(choice, str) else {"type": "function", "function": {"name": choice.name}}
    text_format = request.text.format if request.text else None
    if text_format is not None:
        chat["response_format"] = _response_format(text_format)
    if request.stream:
        chat["stream_options"] = {"include_usage": True}
    try:
        return msgspec.convert(chat, ChatCompletionRequest)
    except msgspec.ValidationError as exc:
        error = invalid(exc)
        raise InvalidRequest(f"the input does not make a valid conversation: {error.message}", param="input") from None


def _response_format(text_format: Any) -> dict[str, Any]:
    kind = type(text_format).__struct_config__.tag
    if kind == "json_schema":
        schema = {"name": text_format.name, "schema": text_format.schema}
        if text_format.description is not None:
            schema["description"] = text_format.description
        if text_format.strict is not None:
            schema["strict"] = text_format.strict
        return {"type": "json_schema", "json_schema": schema}
    return {"type": kind}


class ResponseBuilder:
    """One response's object: its settings from the request, its output and usage from the engine."""

    def __init__(self, request: ResponseCreateRequest, tools: list[FunctionTool] | None, *, public_model: str) -> None:
        self.id = ids.new_id("resp")
        self.created_at = int(time.time())
        self.request = request
        self.tools = [msgspec.to_builtins(tool) for tool in tools or ()]
        self.public_model = public_model

    def document(self, *, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None,
                 finish_reason: str | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        request = self.request
        choice = request.tool_choice
        text_format = request.text.format if request.text and request.text.format else None
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": request.instructions, "max_output_tokens": request.max_output_tokens,
            "model": self.public_model, "output": output,
            "parallel_tool_calls": True if request.parallel_tool_calls is None else request.parallel_tool_calls,
            "previous_response_id": request.previous_response_id,
            "reasoning": {"effort": None, "summary": None}, "store": request.store,
            "temperature": request.temperature, "top_p": request.top_p,
            "text": {"format": msgspec.to_builtins(text_format) if text_format else {"type": "text"}},
            "tool_choice": (choice if isinstance(choice, str) else msgspec.to_builtins(choice)) if choice else "auto",
            "tools": self.tools, "truncation": "disabled", "usage": usage, "user": request.user,
            "metadata": request.metadata or {},
        }

    @staticmethod
    def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int, cost_micro_usd: str) -> dict[str, Any]:
        return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": cached_tokens},
                "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt_tokens + completion_tokens, "cost_micro_usd": cost_micro_usd}

    def from_chat(self, completion: dict[str, Any], cost_micro_usd: str) -> dict[str, Any]:
        """A whole chat completion as this response."""
        choice = (completion.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        output: list[dict[str, Any]] = []
        if message.get("content"):
            output.append(message_item(ids.new_id("msg"), message["content"], "completed"))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            output.append(function_call_item(ids.new_id("fc"), call.get("id") or ids.new_id("call"),
                                             function.get("name", ""), function.get("arguments", ""), "completed"))
        usage = completion.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
        return self.document(status=status, output=output, usage=self.usage(
            usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), cached, cost_micro_usd))


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}
