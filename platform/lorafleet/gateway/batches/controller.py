"""``/v1/batches``: OpenAI's Batch API over the caller's ``batch`` files, run by the gateways' dispatchers."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import FromPath, JSONBody, QueryParameter
from lorafleet.gateway.batches.schemas import Batch, BatchCreate, BatchPage
from lorafleet.gateway.body import StrictBody
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, TENANT_GUARDS, AppServices, Caller, scope
from lorafleet.gateway.error_specs import API_KEY, error_responses
from lorafleet.gateway.openapi import TENANT_SECURITY
from lorafleet.gateway.params import Limit

After = Annotated[str | None, QueryParameter(min_length=1, max_length=64,
                                             description="The id of the last batch of the previous page.")]


class BatchesController(Controller):
    path = "/v1/batches"
    tags = ["Batches"]
    security = TENANT_SECURITY
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES

    @post("/", operation_id="createBatch", status_code=200, dto=StrictBody[BatchCreate], return_dto=None,
          responses=error_responses(400, 413, 429, *API_KEY),
          summary="Run a `batch` file's requests within 24 hours, at the batch discount; each line is admitted, "
                  "routed and billed like the same request made synchronously. The discount pays for deferral: no "
                  "line starts before `LORAFLEET_BATCH_MIN_DELAY_SECONDS` (60 s by default) after the create, and "
                  "lines then run only while workers have headroom.",
          opt=scope("inference", audit="batch.created"))
    async def create_batch(self, data: JSONBody[BatchCreate], services: AppServices, principal: Caller) -> Batch:
        batch = await services.batches.create(principal.tenant_id, principal.key_id, data)
        if services.dispatcher is not None:
            services.dispatcher.poke()
        return batch

    @get("/", operation_id="listBatches", responses=error_responses(400, *API_KEY),
         summary="The caller's batches, newest first (`after`: the last id of the previous page).",
         opt=scope("inference"))
    async def list_batches(self, services: AppServices, principal: Caller, limit: Limit = 20,
                           after: After = None) -> BatchPage:
        return await services.batches.list(principal.tenant_id, after=after, limit=limit)

    @get("/{batch_id:str}", operation_id="retrieveBatch", responses=error_responses(400, 404, *API_KEY),
         summary="One of the caller's batches: status, counts, usage (from the ledger), its files.",
         opt=scope("inference"))
    async def retrieve_batch(self, batch_id: FromPath[str], services: AppServices, principal: Caller) -> Batch:
        return await services.batches.get(principal.tenant_id, batch_id)

    @post("/{batch_id:str}/cancel", operation_id="cancelBatch", status_code=200,
          responses=error_responses(400, 404, *API_KEY),
          summary="Cancel a batch: no new line starts, running lines finish; it ends `cancelled` with what ran "
                  "(only that is billed).",
          opt=scope("inference", audit="batch.cancelled"))
    async def cancel_batch(self, batch_id: FromPath[str], services: AppServices, principal: Caller) -> Batch:
        batch = await services.batches.cancel(principal.tenant_id, batch_id)
        if services.dispatcher is not None:
            services.dispatcher.poke()
        return batch
