"""An OpenAI-compatible upstream that answers instantly, for measuring and testing what sits in front of it.

Serves what a LoraFleet worker serves to a gateway — ``/v1/models``, ``/v1/completions``,
``/v1/chat/completions`` (JSON or SSE with ``chunks`` content chunks, usage on every chunk when
asked, then a usage chunk and ``[DONE]``), ``/lorafleet/state`` and ``/health`` — so the
gateway's whole path (auth, admission, routing, relay, metering) runs as it would against vLLM,
with the engine's cost taken out. With a token, every route but ``/health`` requires it, like the
real worker's guard.

In tests, :class:`StubBehaviour` makes it fail on purpose (a 5xx, a connection dropped after the
request was read, a stream cut after some chunks, a slow answer, state polls answered late — as an
engine using every core answers them) and :attr:`StubBehaviour.received` keeps the bodies it was
sent; :attr:`StubBehaviour.aborted` counts slow answers whose caller had closed the connection by
the time they were ready (what makes vLLM abort a request).

    python -m lorafleet.devtools.stub_worker --port 8500 --model stub-model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PROMPT_TOKENS = 12


@dataclass
class StubBehaviour:
    chunks: int = 8
    token: str = ""                       # the internal token it requires (empty: none)
    fail_next: int = 0                    # answer this many generation requests with fail_status
    fail_status: int = 500                # 424: "this adapter's weights cannot be fetched here"
    drop_next: int = 0                    # close this many connections without answering
    cut_after_chunks: int | None = None   # end streams (without [DONE]) after this many chunks
    delay_seconds: float = 0.0            # before answering (or between chunks when streaming)
    state_delay_seconds: float = 0.0      # before answering a state poll
    state_polls: int = 0                  # state polls received
    aborted: int = 0                      # answers not sent: the caller had closed the connection
    received: list[dict[str, Any]] = field(default_factory=list)
    last_received: float = 0.0            # time.monotonic() of the latest: which of several stubs was called last
    adapters_on_disk: list[str] = field(default_factory=list)
    cached_tokens: int | None = None      # report usage.prompt_tokens_details.cached_tokens (vLLM's prefix cache)
    hold_marker: str | None = None        # a request whose body contains this text waits for `release`
    release: asyncio.Event = field(default_factory=asyncio.Event)


def build_app(model: str, chunks: int = 8, behaviour: StubBehaviour | None = None) -> web.Application:
    behaviour = behaviour or StubBehaviour(chunks=chunks)

    def usage(completion: int) -> dict:
        reported = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
                    "total_tokens": PROMPT_TOKENS + completion}
        if behaviour.cached_tokens is not None:
            reported["prompt_tokens_details"] = {"cached_tokens": behaviour.cached_tokens}
        return reported

    @web.middleware
    async def guard(request: web.Request, handler):
        if behaviour.token and request.path != "/health":
            if request.headers.get("Authorization") != f"Bearer {behaviour.token}":
                return web.json_response({"error": {"message": "unauthorized"}}, status=401)
        return await handler(request)

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "stub"}]})

    async def state(_: web.Request) -> web.Response:
        behaviour.state_polls += 1
        if behaviour.state_delay_seconds:
            await asyncio.sleep(behaviour.state_delay_seconds)
        return web.json_response({"in_flight": 0, "served": len(behaviour.received), "idle_seconds": 0.0, "running": 0, "waiting": 0,
                                  "kv_cache_usage": 0.0, "max_loras": 4, "max_cpu_loras": 16,
                                  "adapters": {"slots": [], "cpu": [], "pinned": [],
                                               "disk": behaviour.adapters_on_disk, "disk_pinned": [], "running": []}})

    async def complete(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        behaviour.received.append(body)
        behaviour.last_received = time.monotonic()
        if behaviour.drop_next > 0:
            behaviour.drop_next -= 1
            request.transport.close()  # nothing answered: the gateway sees a dropped connection
            raise web.HTTPInternalServerError()
        if behaviour.fail_next > 0:
            behaviour.fail_next -= 1
            return web.json_response({"error": {"message": "failed", "type": "stub", "code": behaviour.fail_status}},
                                     status=behaviour.fail_status)
        if behaviour.hold_marker is not None and behaviour.hold_marker in json.dumps(body):
            await behaviour.release.wait()  # a test holds this one to look at what is in flight
        if behaviour.delay_seconds:
            await asyncio.sleep(behaviour.delay_seconds)
            if request.transport is None or request.transport.is_closing():
                behaviour.aborted += 1  # the caller left while "generating": vLLM aborts such a request
                raise web.HTTPServiceUnavailable()
        chat = request.path.endswith("/chat/completions")
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        count = behaviour.chunks
        tool = _forced_tool(body) if chat else None
        if tool is not None:
            return await _tool_call(request, body, tool, created, usage(TOOL_CALL_TOKENS))
        if not body.get("stream"):
            choice = ({"index": 0, "message": {"role": "assistant", "content": "ok " * count}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": "ok " * count, "finish_reason": "length"})
            return web.json_response({"id": "cmpl-stub", "object": kind, "created": created, "model": body["model"],
                                      "choices": [choice], "usage": usage(count)})
        options = body.get("stream_options") or {}
        continuous = bool(options.get("continuous_usage_stats"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events = []
        for index in range(count):
            if behaviour.cut_after_chunks is not None and index >= behaviour.cut_after_chunks:
                await response.write(b"".join(events))
                request.transport.close()
                return response
            finish = "length" if index == count - 1 else None  # as the whole answer: cut at max_tokens
            choice = ({"index": 0, "delta": {"content": "ok "}, "finish_reason": finish} if chat
                      else {"index": 0, "text": "ok ", "finish_reason": finish})
            chunk = {"id": "cmpl-stub", "object": f"{kind}.chunk", "created": created, "model": body["model"],
                     "choices": [choice]}
            if continuous:
                chunk["usage"] = usage(index + 1)
            events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if behaviour.delay_seconds:
                await response.write(b"".join(events))
                events.clear()
                await asyncio.sleep(behaviour.delay_seconds)
        if options.get("include_usage"):
            events.append(b"data: " + json.dumps({"id": "cmpl-stub", "object": f"{kind}.chunk", "created": created,
                                                  "model": body["model"], "choices": [],
                                                  "usage": usage(count)}).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        await response.write(b"".join(events))
        await response.write_eof()
        return response

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[guard])
    app.router.add_get("/v1/models", models)
    app.router.add_get("/lorafleet/state", state)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/completions", complete)
    app.router.add_post("/v1/chat/completions", complete)
    return app


TOOL_CALL_TOKENS = 5
TOOL_ARGUMENTS = ('{"stub": ', 'true}')  # streamed in two pieces


def _forced_tool(body: dict[str, Any]) -> str | None:
    """The tool a request forces (``required`` or a named function): the stub calls it, like a model would."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    if not tools or choice in (None, "auto", "none"):
        return None
    if isinstance(choice, dict):
        return choice["function"]["name"]
    return tools[0]["function"]["name"]


async def _tool_call(request: web.Request, body: dict[str, Any], name: str, created: int,
                     usage: dict[str, Any]) -> web.StreamResponse:
    head = {"id": "chatcmpl-stub", "created": created, "model": body["model"]}
    if not body.get("stream"):
        call = {"id": "call_stub", "type": "function", "function": {"name": name, "arguments": "".join(TOOL_ARGUMENTS)}}
        return web.json_response({**head, "object": "chat.completion", "usage": usage, "choices": [
            {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
             "finish_reason": "tool_calls"}]})
    deltas = [{"index": 0, "id": "call_stub", "type": "function", "function": {"name": name, "arguments": ""}}]
    deltas += [{"index": 0, "function": {"arguments": piece}} for piece in TOOL_ARGUMENTS]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for index, delta in enumerate(deltas):
        last = index == len(deltas) - 1
        chunk = {**head, "object": "chat.completion.chunk", "usage": usage, "choices": [
            {"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": "tool_calls" if last else None}]}
        await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="stub-model")
    parser.add_argument("--chunks", type=int, default=8)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(build_app(args.model, args.chunks), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
