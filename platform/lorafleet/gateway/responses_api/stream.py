"""A chat stream, chunk by chunk, as the Responses API's typed events.

``response.created`` and ``response.in_progress`` first; an assistant message's text as
``response.output_item.added`` → ``response.content_part.added`` → ``response.output_text.delta``…
→ ``.done`` events; each tool call as its own ``function_call`` item with
``response.function_call_arguments.delta``/``.done``; then ``response.completed`` (or
``response.incomplete`` when ``max_output_tokens`` cut it, ``response.failed`` when the worker
failed mid-way) carrying the whole response with its usage. Every event has a ``sequence_number``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from lorafleet.core import ids
from lorafleet.gateway.metering.meter import Meter
from lorafleet.gateway.responses_api.bridge import ResponseBuilder, function_call_item, message_item

_encode = msgspec.json.Encoder().encode


class _Call:
    __slots__ = ("item_id", "call_id", "name", "arguments", "output_index")

    def __init__(self, output_index: int, call_id: str, name: str) -> None:
        self.item_id = ids.new_id("fc")
        self.call_id = call_id
        self.name = name
        self.arguments = ""
        self.output_index = output_index


class ResponseEvents:
    """The stream shaper for ``/v1/responses`` (see openai/sse.py's ``ChunkShaper``)."""

    def __init__(self, builder: ResponseBuilder, meter: Meter,
                 on_complete: Callable[[dict[str, Any]], Awaitable[None]] | None) -> None:
        self._builder = builder
        self._meter = meter
        self._on_complete = on_complete
        self._sequence = 0
        self._started = False
        self._message_id: str | None = None
        self._message_index = 0
        self._text: list[str] = []
        self._calls: dict[int, _Call] = {}
        self._next_index = 0
        self._finish_reason: str | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        fields["type"] = kind
        fields["sequence_number"] = self._sequence
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + _encode(fields) + b"\n\n"

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        snapshot = self._builder.document(status="in_progress", output=[], usage=None)
        return self._event("response.created", response=snapshot) + self._event("response.in_progress", response=snapshot)

    def chunk(self, chunk: dict[str, Any]) -> bytes | None:
        out = [self._start()]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out.append(self._text_delta(delta["content"]))
            for call in delta.get("tool_calls") or ():
                out.append(self._call_delta(call))
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        joined = b"".join(out)
        return joined or None

    def _text_delta(self, text: str) -> bytes:
        out = b""
        if self._message_id is None:
            self._message_id = ids.new_id("msg")
            self._message_index = self._next_index
            self._next_index += 1
            out += self._event("response.output_item.added", output_index=self._message_index,
                               item=message_item(self._message_id, "", "in_progress") | {"content": []})
            out += self._event("response.content_part.added", item_id=self._message_id,
                               output_index=self._message_index, content_index=0,
                               part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
        self._text.append(text)
        return out + self._event("response.output_text.delta", item_id=self._message_id,
                                 output_index=self._message_index, content_index=0, delta=text, logprobs=[])

    def _call_delta(self, delta: dict[str, Any]) -> bytes:
        index = delta.get("index", 0)
        function = delta.get("function") or {}
        out = b""
        call = self._calls.get(index)
        if call is None:
            call = self._calls[index] = _Call(self._next_index, delta.get("id") or ids.new_id("call"),
                                             function.get("name") or "")
            self._next_index += 1
            out += self._event("response.output_item.added", output_index=call.output_index,
                               item=function_call_item(call.item_id, call.call_id, call.name, "", "in_progress"))
        elif function.get("name"):
            call.name += function["name"]
        piece = function.get("arguments") or ""
        if piece:
            call.arguments += piece
            out += self._event("response.function_call_arguments.delta", item_id=call.item_id,
                               output_index=call.output_index, delta=piece)
        return out

    def done(self) -> bytes | None:
        return None  # the closing events need the final usage: end() sends them

    def upstream_error(self, chunk: dict[str, Any]) -> bytes:
        error = chunk.get("error") or {}
        return self._start() + self._event("error", code=error.get("code"), message=str(error.get("message", "")),
                                           param=error.get("param"))

    async def end(self, *, failed: bool, error_forwarded: bool) -> bytes | None:
        out = [self._start()]
        status = "failed" if failed else ("incomplete" if self._finish_reason == "length" else "completed")
        item_status = "incomplete" if failed or status == "incomplete" else "completed"
        output: list[dict[str, Any]] = []
        items: list[tuple[int, bytes]] = []
        if self._message_id is not None:
            text = "".join(self._text)
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item = message_item(self._message_id, text, item_status)
            output.append(item)
            items.append((self._message_index,
                          self._event("response.output_text.done", item_id=self._message_id,
                                      output_index=self._message_index, content_index=0, text=text, logprobs=[])
                          + self._event("response.content_part.done", item_id=self._message_id,
                                        output_index=self._message_index, content_index=0, part=part)
                          + self._event("response.output_item.done", output_index=self._message_index, item=item)))
        for call in self._calls.values():
            item = function_call_item(call.item_id, call.call_id, call.name, call.arguments, item_status)
            output.append(item)
            items.append((call.output_index,
                          self._event("response.function_call_arguments.done", item_id=call.item_id,
                                      output_index=call.output_index, arguments=call.arguments)
                          + self._event("response.output_item.done", output_index=call.output_index, item=item)))
        out += [events for _, events in sorted(items, key=lambda pair: pair[0])]
        output.sort(key=lambda item: self._index_of(item))
        meter = self._meter
        usage = self._builder.usage(meter.prompt_tokens, meter.completion_tokens, meter.cached_prompt_tokens, meter.cost)
        error = {"code": "server_error", "message": "The inference worker failed mid-stream; the output is incomplete."} \
            if failed else None
        document = self._builder.document(status=status, output=output, usage=usage, error=error)
        if self._on_complete is not None and not failed:
            await self._on_complete(document)  # first: a response that could not be stored says so (store: false)
        kind = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}[status]
        out.append(self._event(kind, response=document))
        return b"".join(out)

    def _index_of(self, item: dict[str, Any]) -> int:
        if item["type"] == "message":
            return self._message_index
        return next(call.output_index for call in self._calls.values() if call.item_id == item["id"])


def replayed_events(document: dict[str, Any]) -> bytes:
    """A finished response's events again, for an idempotent retry of a streamed request: the same
    items, ids and final object; each item's text or arguments in one delta."""
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        fields["type"] = kind
        fields["sequence_number"] = sequence
        sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + _encode(fields) + b"\n\n"

    snapshot = {**document, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    out = [event("response.created", response=snapshot), event("response.in_progress", response=snapshot)]
    for index, item in enumerate(document.get("output") or ()):
        if item.get("type") == "message":
            text = "".join(part.get("text", "") for part in item.get("content") or ())
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out += [event("response.output_item.added", output_index=index, item={**item, "content": [],
                                                                                   "status": "in_progress"}),
                    event("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                          part=part),
                    event("response.output_text.delta", item_id=item["id"], output_index=index, content_index=0,
                          delta=text, logprobs=[]),
                    event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                          text=text, logprobs=[]),
                    event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                          part={**part, "text": text})]
        elif item.get("type") == "function_call":
            arguments = item.get("arguments", "")
            out += [event("response.output_item.added", output_index=index, item={**item, "arguments": "",
                                                                                   "status": "in_progress"}),
                    event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                          delta=arguments),
                    event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                          arguments=arguments)]
        out.append(event("response.output_item.done", output_index=index, item=item))
    kind = "response.incomplete" if document.get("status") == "incomplete" else "response.completed"
    out.append(event(kind, response=document))
    return b"".join(out)
