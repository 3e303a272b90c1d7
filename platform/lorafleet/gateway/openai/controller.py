"""``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``."""

from __future__ import annotations

import datetime as dt
from typing import Any

import structlog
from litestar import Controller, Request, Response, get, post
from litestar.di import Provide

from lorafleet.gateway.auth import Principal
from lorafleet.gateway.body import decode_object, validate
from lorafleet.gateway.dependencies import provide_principal, provide_services
from lorafleet.gateway.openai.relay import CompletionCall
from lorafleet.gateway.openai.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields, known_fields
from lorafleet.gateway.request_context import request_log
from lorafleet.gateway.services import Services

log = structlog.get_logger("lorafleet.openai")

_ENDPOINTS: dict[str, tuple[str, type[SamplingFields]]] = {
    "/v1/chat/completions": ("chat.completions", ChatCompletionRequest),
    "/v1/completions": ("completions", CompletionRequest),
}
_KNOWN = {path: known_fields(struct) for path, (_, struct) in _ENDPOINTS.items()}


class OpenAIController(Controller):
    path = "/v1"
    tags = ["OpenAI"]
    dependencies = {"principal": Provide(provide_principal), "services": Provide(provide_services)}

    @post("/chat/completions", operation_id="createChatCompletion", status_code=200,
          summary="Create a chat completion (OpenAI-compatible; streams with stream=true).")
    async def chat_completions(self, request: Request, principal: Principal, services: Services) -> Response[Any]:
        return await _complete(request, principal, services, "/v1/chat/completions")

    @post("/completions", operation_id="createCompletion", status_code=200,
          summary="Create a text completion (OpenAI-compatible; streams with stream=true).")
    async def completions(self, request: Request, principal: Principal, services: Services) -> Response[Any]:
        return await _complete(request, principal, services, "/v1/completions")

    @get("/models", operation_id="listModels", summary="Models this key can call.")
    async def list_models(self, principal: Principal, services: Services) -> dict[str, Any]:
        principal.require("inference")
        models: list[dict[str, Any]] = [
            {"id": m.name, "object": "model", "created": m.created, "owned_by": "lorafleet", "max_model_len": m.max_model_len}
            for m in sorted(services.catalog.all(), key=lambda m: m.name)
        ]
        adapters = await services.adapters.list_all(principal.tenant_id)
        models += [
            {"id": a.name, "object": "model", "created": int(a.created_at.timestamp()), "owned_by": principal.tenant_id,
             "parent": a.base_model}
            for a in sorted(adapters, key=lambda a: a.name)
        ]
        return {"object": "list", "data": models}


async def _complete(request: Request, principal: Principal, services: Services, path: str) -> Response[Any]:
    principal.require("inference")
    endpoint, struct = _ENDPOINTS[path]
    raw = decode_object(await request.body())
    parsed = validate(raw, struct)
    entry = request_log(request.scope)
    entry["model"] = parsed.model
    unknown = sorted(set(raw) - _KNOWN[path])
    if unknown:
        entry["unknown_fields"] = unknown  # names only: values may hold prompt text
    resolved = await services.catalog.resolve(principal.tenant_id, parsed.model)
    started_at = dt.datetime.now(dt.UTC)
    price = services.catalog.prices.at(resolved.base.id, started_at)
    admitted = await services.admission.admit(principal, entry["request_id"], raw, parsed, resolved, price)
    options = parsed.stream_options
    call = CompletionCall(
        request_id=entry["request_id"],
        price=price,
        started_at=started_at,
        principal=principal,
        base_model_id=resolved.base.id,
        base_model_name=resolved.base.name,
        served_model=resolved.served_name,
        adapter_id=resolved.adapter_id,
        public_model=parsed.model,
        endpoint=endpoint,
        upstream_path=path,
        body=raw,
        stream=parsed.stream,
        client_usage=bool(options and options.include_usage),
        client_continuous_usage=bool(options and options.include_usage and options.continuous_usage_stats),
        log_entry=entry,
    )
    response = await services.relay.complete(call)
    response.headers.update(admitted.headers)
    return response
