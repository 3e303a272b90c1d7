"""An OpenAI-compatible upstream that answers instantly, for measuring what sits in front of it.

Serves ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions`` (JSON or SSE with
``--chunks`` content chunks, usage on every chunk when asked, then a usage chunk and
``[DONE]``), so the gateway's whole path — auth, admission, routing, relay, metering — runs as it
would against vLLM, with the engine's cost taken out.

    python -m lorafleet.devtools.stub_worker --port 8500 --model stub-model
"""

from __future__ import annotations

import argparse
import json
import time

from aiohttp import web


def build_app(model: str, chunks: int) -> web.Application:
    prompt_tokens = 12

    def usage(completion: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "stub"}]})

    async def complete(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            choice = ({"index": 0, "message": {"role": "assistant", "content": "ok " * chunks}, "finish_reason": "length"}
                      if chat else {"index": 0, "text": "ok " * chunks, "finish_reason": "length"})
            return web.json_response({"id": "cmpl-stub", "object": kind, "created": created, "model": body["model"],
                                      "choices": [choice], "usage": usage(chunks)})
        options = body.get("stream_options") or {}
        continuous = bool(options.get("continuous_usage_stats"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events = []
        for index in range(chunks):
            choice = ({"index": 0, "delta": {"content": "ok "}, "finish_reason": None} if chat
                      else {"index": 0, "text": "ok ", "finish_reason": None})
            chunk = {"id": "cmpl-stub", "object": f"{kind}.chunk", "created": created, "model": body["model"],
                     "choices": [choice]}
            if continuous:
                chunk["usage"] = usage(index + 1)
            events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        if options.get("include_usage"):
            events.append(b"data: " + json.dumps({"id": "cmpl-stub", "object": f"{kind}.chunk", "created": created,
                                                  "model": body["model"], "choices": [],
                                                  "usage": usage(chunks)}).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        await response.write(b"".join(events))
        await response.write_eof()
        return response

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/completions", complete)
    app.router.add_post("/v1/chat/completions", complete)
    return app


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
