"""``/v1/embeddings``: the same request path as completions — admission, placement, failover, one ledger
row (endpoint ``embeddings``, billed per input token at the embedding model's prompt price) — to a
worker that runs its base model in pooling mode (``LORAFLEET_WORKER_TASK=embed``)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Response, post
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody
from lorafleet.billing.ledger_row import Endpoint
from lorafleet.gateway import preflight
from lorafleet.gateway.body import StrictBody
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, TENANT_GUARDS, AppServices, Caller, Context, scope
from lorafleet.gateway.embeddings.schemas import EmbeddingList, EmbeddingRequest
from lorafleet.gateway.metering.meter import Meter
from lorafleet.gateway.openai.completion import COMPLETION_ERRORS, run_admitted
from lorafleet.gateway.openai.forwarding import salted
from lorafleet.gateway.openai.relay import COST_HEADER
from lorafleet.gateway.openai.sse import tidy
from lorafleet.gateway.openapi import TENANT_SECURITY

_encode = msgspec.json.Encoder().encode


class EmbeddingShaping:
    """An embeddings answer, under the client's model name; never streamed."""

    def __init__(self, public_model: str) -> None:
        self._public_model = public_model

    def stream_shaper(self, meter: Meter):  # pragma: no cover - an embeddings request never streams
        raise AssertionError("embeddings are not streamed")

    async def whole(self, document: dict[str, Any], meter: Meter) -> Response[Any]:
        document.pop("id", None)
        document.pop("created", None)
        return Response(_encode(tidy(document, self._public_model)), media_type="application/json",
                        headers={COST_HEADER: str(meter.cost)})


class EmbeddingsController(Controller):
    path = "/v1/embeddings"
    tags = ["OpenAI"]
    security = TENANT_SECURITY
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES

    @post("/", operation_id="createEmbedding", status_code=200, dto=StrictBody[EmbeddingRequest], return_dto=None,
          responses={200: ResponseSpec(EmbeddingList, generate_examples=False, description="One embedding per input."),
                     **COMPLETION_ERRORS},
          summary="Create embeddings (OpenAI-compatible) with an embedding base model.", opt=scope("inference", audit=False))
    async def create(self, data: JSONBody[EmbeddingRequest], context: Context, services: AppServices, principal: Caller) -> Response[Any]:
        resolved = await services.catalog.resolve(principal.tenant_id, data.model)
        demand = preflight.embedding(data, resolved, services.settings).demand
        body = salted(_encode(msgspec.structs.replace(data, model=resolved.served_name)),
                      services.cache_salts.salt(principal.tenant_id))
        return await run_admitted(Endpoint.EMBEDDINGS, data.model, False, body, demand, resolved, context, services, principal,
                                  EmbeddingShaping(data.model))
