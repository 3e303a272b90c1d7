"""``/v1/fine_tuning/jobs``: OpenAI's fine-tuning API over the caller's files and the served base models.

The route checks what it can without the model's tokenizer (the files are the caller's and of purpose
``fine-tune``, the model is a served base model, the hyperparameters are in bounds, the tenant is
under its cap of open jobs) and stores the job ``validating_files``; a trainer of that base model
validates the file line by line with the real tokenizer and chat template (trainer/runner.py).
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, get, post
from litestar.params import FromPath, JSONBody, QueryParameter
from lorafleet.finetune.jobs import CheckpointPage, EventPage, FineTuningJob, JobCreate, JobPage, metadata_filter
from lorafleet.gateway.adapters.releases import adapter_download
from lorafleet.gateway.body import StrictBody
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, TENANT_GUARDS, AppServices, Caller, scope
from lorafleet.gateway.downloads import Download
from lorafleet.gateway.error_specs import API_KEY, error_responses
from lorafleet.gateway.fleet.catalog import ResolvedModel, require_task
from lorafleet.gateway.openapi import TENANT_SECURITY
from lorafleet.gateway.params import Limit

After = Annotated[str | None, QueryParameter(min_length=1, max_length=64,
                                             description="The id of the last object of the previous page.")]
JOB_ID = "fine_tuning_job_id"


class FineTuningController(Controller):
    path = "/v1/fine_tuning/jobs"
    tags = ["Fine-tuning"]
    security = TENANT_SECURITY
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES

    @post("/", operation_id="createFineTuningJob", status_code=200, dto=StrictBody[JobCreate], return_dto=None,
          responses=error_responses(400, 402, 404, 413, *API_KEY),
          summary="Start a fine-tuning job: a LoRA of a served base model, trained on one of your `fine-tune` files.",
          opt=scope("adapters:write", audit="fine_tuning.job.created"))
    async def create_job(self, data: JSONBody[JobCreate], services: AppServices, principal: Caller) -> FineTuningJob:
        base = services.catalog.base(data.model)
        require_task(ResolvedModel(base, None), "generate", data.model)
        return await services.fine_tuning.create(principal.tenant_id, principal.key_id, base.id, data)

    @get("/", operation_id="listFineTuningJobs", responses=error_responses(400, *API_KEY),
         summary="The caller's fine-tuning jobs, newest first (`after`: the last id of the previous page).",
         opt=scope("adapters:read"))
    async def list_jobs(self, request: Request, services: AppServices, principal: Caller, limit: Limit = 20,
                        after: After = None) -> JobPage:
        # `metadata[k]=v` (OpenAI's deep-object filter) is read from the raw query: it has no fixed name.
        return await services.fine_tuning.list(principal.tenant_id, after=after, limit=limit,
                                               metadata=metadata_filter(request.query_params))

    @get("/{fine_tuning_job_id:str}", operation_id="retrieveFineTuningJob",
         responses=error_responses(400, 404, *API_KEY), summary="One of the caller's fine-tuning jobs.",
         opt=scope("adapters:read"))
    async def retrieve_job(self, fine_tuning_job_id: FromPath[str], services: AppServices,
                           principal: Caller) -> FineTuningJob:
        return await services.fine_tuning.get(principal.tenant_id, fine_tuning_job_id)

    @post("/{fine_tuning_job_id:str}/cancel", operation_id="cancelFineTuningJob", status_code=200,
          responses=error_responses(400, 404, *API_KEY),
          summary="Cancel a job not finished yet: training stops within seconds; the steps done are billed.",
          opt=scope("adapters:write", audit="fine_tuning.job.cancelled"))
    async def cancel_job(self, fine_tuning_job_id: FromPath[str], services: AppServices,
                         principal: Caller) -> FineTuningJob:
        return await services.fine_tuning.cancel(principal.tenant_id, fine_tuning_job_id)

    @post("/{fine_tuning_job_id:str}/pause", operation_id="pauseFineTuningJob", status_code=200,
          responses=error_responses(400, 404, *API_KEY),
          summary="Pause a queued or running job: its trainer saves a checkpoint and lets go; the job keeps its "
                  "reservation.", opt=scope("adapters:write", audit="fine_tuning.job.paused"))
    async def pause_job(self, fine_tuning_job_id: FromPath[str], services: AppServices,
                        principal: Caller) -> FineTuningJob:
        return await services.fine_tuning.pause(principal.tenant_id, fine_tuning_job_id)

    @post("/{fine_tuning_job_id:str}/resume", operation_id="resumeFineTuningJob", status_code=200,
          responses=error_responses(400, 404, 409, *API_KEY),
          summary="Resume a paused job: queued again, it continues from its checkpoint (no step trained twice).",
          opt=scope("adapters:write", audit="fine_tuning.job.resumed"))
    async def resume_job(self, fine_tuning_job_id: FromPath[str], services: AppServices,
                         principal: Caller) -> FineTuningJob:
        return await services.fine_tuning.resume(principal.tenant_id, fine_tuning_job_id)

    @get("/{fine_tuning_job_id:str}/events", operation_id="listFineTuningEvents",
         responses=error_responses(400, 404, *API_KEY),
         summary="A job's events, newest first: messages, and metrics (step, train_loss, …) per training step.",
         opt=scope("adapters:read"))
    async def list_events(self, fine_tuning_job_id: FromPath[str], services: AppServices, principal: Caller,
                          limit: Limit = 20, after: After = None) -> EventPage:
        return await services.fine_tuning.events(principal.tenant_id, fine_tuning_job_id, after=after,
                                                         limit=limit)

    @get("/{fine_tuning_job_id:str}/checkpoints", operation_id="listFineTuningCheckpoints",
         responses=error_responses(400, 404, *API_KEY), summary="A job's checkpoints, newest first.",
         opt=scope("adapters:read"))
    async def list_checkpoints(self, fine_tuning_job_id: FromPath[str], services: AppServices, principal: Caller,
                               limit: Limit = 10, after: After = None) -> CheckpointPage:
        return await services.fine_tuning.checkpoints(principal.tenant_id, fine_tuning_job_id, after=after,
                                                              limit=limit)

    @get("/{fine_tuning_job_id:str}/checkpoints/{checkpoint_id:str}/content",
         operation_id="downloadFineTuningCheckpoint", media_type="application/octet-stream",
         responses=error_responses(400, 404, 429, 503, *API_KEY),
         summary="A checkpoint's adapter as a PEFT-loadable tar (as GET /v1/adapters/{id}/content); its sha256 in "
                 "X-LoraFleet-Sha256.", opt=scope("adapters:read"))
    async def download_checkpoint(self, fine_tuning_job_id: FromPath[str], checkpoint_id: FromPath[str],
                                  services: AppServices, principal: Caller) -> Download:
        adapter_id = await services.adapters.checkpoint_adapter(principal.tenant_id, fine_tuning_job_id, checkpoint_id)
        return await adapter_download(services, services.adapters, principal.tenant_id, adapter_id)
