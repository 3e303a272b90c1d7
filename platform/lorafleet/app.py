"""The composition root: the gateway's app — its resources in the lifespan, the gateway's and the
dashboard's routes, errors, OpenAPI — built above both, so neither package imports the other's app
(the dashboard uses gateway services; the gateway never imports the dashboard)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from litestar import Litestar, Router
from lorafleet.adapters.aliases import AliasService
from lorafleet.adapters.blobstore import make_blob_store
from lorafleet.adapters.sandbox import SandboxLimits
from lorafleet.adapters.service import AdapterQuota, AdapterService
from lorafleet.core import ids
from lorafleet.core.settings import GatewaySettings, get_settings
from lorafleet.dashboard import (
    DashboardController,
    DashboardFileUploadController,
    DashboardUploadController,
    static_files,
)
from lorafleet.db import create_pool
from lorafleet.db.migrate import migrate
from lorafleet.files.janitor import ExpiredFiles
from lorafleet.files.service import FileService
from lorafleet.finetune.jobs import FineTuningJobs
from lorafleet.gateway.account import AccountController
from lorafleet.gateway.adapters import AdaptersController
from lorafleet.gateway.adapters.releases import AdapterReleasesController
from lorafleet.gateway.admin import AdminController
from lorafleet.gateway.audit.controller import AuditLogsController, OperatorAuditLogsController
from lorafleet.gateway.audit.recorder import audit_layer
from lorafleet.gateway.auth import KeyAuthenticator
from lorafleet.gateway.batches.controller import BatchesController
from lorafleet.gateway.batches.dispatcher import BatchDispatcher
from lorafleet.gateway.batches.service import Batches
from lorafleet.gateway.batches.spool import make_answer_spool
from lorafleet.gateway.body import StrictStructSchema
from lorafleet.gateway.context import context_middleware
from lorafleet.gateway.dependencies import APP_DEPENDENCIES
from lorafleet.gateway.downloads import TransferSlots
from lorafleet.gateway.embeddings.controller import EmbeddingsController
from lorafleet.gateway.errors import EXCEPTION_HANDLERS
from lorafleet.gateway.files import FilesController
from lorafleet.gateway.fine_tuning import FineTuningController
from lorafleet.gateway.fleet.adapter_calls import AdapterCalls
from lorafleet.gateway.fleet.catalog import ModelCatalog
from lorafleet.gateway.fleet.holding import HeldRequests, HoldLimits
from lorafleet.gateway.fleet.registry import WorkerRegistry
from lorafleet.gateway.janitor import RetentionJanitor
from lorafleet.gateway.keys import KeysController
from lorafleet.gateway.metering.admission import Admission
from lorafleet.gateway.metering.refusals import RefusalCounter
from lorafleet.gateway.metering.spool import LedgerSpool
from lorafleet.gateway.metering.sweeper import ReservationSweeper
from lorafleet.gateway.metering.writer import LedgerWriter
from lorafleet.gateway.metrics import GatewayMetrics
from lorafleet.gateway.openai.controller import OpenAIController
from lorafleet.gateway.openai.forwarding import CacheSalts
from lorafleet.gateway.openai.relay import Relay, upstream_connector
from lorafleet.gateway.openapi import openapi_config
from lorafleet.gateway.projects.controller import ProjectsController
from lorafleet.gateway.responses_api.controller import ResponsesController
from lorafleet.gateway.responses_api.store import ResponseStore
from lorafleet.gateway.services import Services
from lorafleet.gateway.system import SystemController
from lorafleet.gateway.throttle import FailureThrottle
from lorafleet.gateway.webhooks.controller import WebhookEndpointsController, WebhookEventTypesController
from lorafleet.gateway.webhooks.delivery import WebhookDeliverer, WebhookSender
from lorafleet.gateway.webhooks.service import WebhookEndpoints
from lorafleet.tenancy.storage import StorageQuota, TenantStorage

MULTIPART_OVERHEAD_BYTES = 64 * 1024  # a file upload's form fields and framing, beside the file itself


def quiet_garbage_collector() -> None:
    """Move what startup allocated (modules, routes, schemas: ~10^5 objects) out of the collector's
    reach and collect the young generation less often. Each full collection walked them all and cost
    a measurable share of every request's CPU; requests allocate short-lived objects with few cycles."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def create_app(settings: GatewaySettings | None = None) -> Litestar:
    settings = settings or get_settings(GatewaySettings)
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await migrate(settings.database_url)  # advisory-locked: safe with several gateways starting
        pool = await create_pool(settings.database_url, max_size=settings.db_pool_size)
        http = aiohttp.ClientSession(connector=upstream_connector(), auto_decompress=False)
        gateway_id = ids.gateway_id()
        catalog = ModelCatalog(pool, settings.catalog_refresh_seconds)
        registry = WorkerRegistry(pool, http, settings.internal_token, settings.worker_refresh_seconds,
                                  database_url=settings.database_url, gateway_id=gateway_id,
                                  strategy=settings.placement_strategy, silence_seconds=settings.worker_silence_seconds)
        ledger = LedgerWriter(pool, spool=LedgerSpool(settings.resolved_spool_dir, gateway_id))
        sweeper = ReservationSweeper(pool, gateway_id, heartbeat_seconds=settings.gateway_heartbeat_seconds,
                                     dead_after_seconds=settings.gateway_dead_after_seconds,
                                     reservation_max_seconds=settings.reservation_max_seconds)
        refusals = RefusalCounter(pool)
        holds = HeldRequests(pool, registry, timeout=settings.wake_timeout_seconds, gateway_id=gateway_id,
                             limits=HoldLimits(settings.hold_max_requests, settings.hold_max_bytes,
                                               settings.tenant_hold_max_requests, settings.tenant_hold_max_bytes))
        relay = Relay(http, registry, metrics, settings.internal_token,
                      connect_timeout=settings.upstream_connect_timeout_seconds,
                      idle_timeout=settings.upstream_idle_timeout_seconds,
                      attempts=settings.upstream_attempts, holds=holds)
        blobs = make_blob_store(settings)
        files = FileService(pool, blobs, TenantStorage(
            pool, "files", StorageQuota(settings.tenant_max_file_bytes, settings.tenant_max_files,
                                        settings.max_file_bytes), noun="files"))
        janitor = RetentionJanitor(pool, expired_files=ExpiredFiles(files))
        services = Services(
            settings=settings, pool=pool, http=http, metrics=metrics,
            auth=KeyAuthenticator(pool, settings.key_cache_seconds, stale_seconds=settings.auth_stale_seconds,
                                  throttle=FailureThrottle(settings.auth_failures_per_minute)),
            admission=Admission(pool, gateway_id, refusals, synchronous_commit=settings.admission_synchronous_commit,
                                tenant_max_sequences=settings.tenant_max_concurrent_sequences),
            sweeper=sweeper, catalog=catalog, registry=registry, ledger=ledger, relay=relay,
            adapter_calls=AdapterCalls(registry, http, settings.internal_token),
            adapters=AdapterService(
                pool, blobs,
                SandboxLimits(max_files=settings.max_adapter_files, max_bytes=settings.max_upload_bytes),
                quota=AdapterQuota(settings.tenant_max_adapters, settings.tenant_max_adapter_bytes)),
            aliases=AliasService(pool),
            cache_salts=CacheSalts(settings.internal_token),
            responses=ResponseStore(pool, settings.responses_retention_days, TenantStorage(
                pool, "responses", StorageQuota(settings.tenant_max_stored_response_bytes,
                                                settings.tenant_max_stored_responses,
                                                settings.responses_max_stored_bytes), noun="stored responses")),
            holds=holds,
            files=files,
            fine_tuning=FineTuningJobs(pool, files, max_open_jobs=settings.tenant_max_fine_tuning_jobs),
            batches=Batches(pool, files, catalog, settings),
            downloads=TransferSlots(max_transfers=settings.max_downloads,
                                    tenant_max_transfers=settings.tenant_max_downloads),
            uploads=TransferSlots(max_transfers=settings.max_uploads, tenant_max_transfers=settings.tenant_max_uploads,
                                  noun="uploads"),
        )
        sender = WebhookSender(settings.webhook_allow_private, settings.webhook_timeout_seconds)
        services.webhooks = WebhookEndpoints(pool, sender)
        services.webhook_deliverer = WebhookDeliverer(pool, gateway_id, sender, poll_seconds=settings.webhook_poll_seconds,
                                                      retry_base_seconds=settings.webhook_retry_base_seconds)
        services.dispatcher = BatchDispatcher(app, pool, files, catalog, registry, ledger, settings, gateway_id,
                                              make_answer_spool(settings))
        ledger.start()
        refusals.start()
        janitor.start()
        await sweeper.start()
        await catalog.start()
        await registry.start()
        app.state.services = services
        if settings.webhook_dispatch:
            services.webhook_deliverer.start()
        if settings.batch_dispatch:
            services.dispatcher.start()  # after the services: its lines go through the app's routes
        quiet_garbage_collector()
        try:
            yield
        finally:
            await services.dispatcher.close()  # lines in flight finish (or go back to the queue) before the rest
            await services.webhook_deliverer.close()  # an attempt cut here is sent again once its lease expires
            await holds.close()
            await registry.close()
            await catalog.close()
            await ledger.close()  # every recorded row reaches the database (or the spool) before we exit
            await refusals.close()
            await janitor.close()
            await sweeper.close()
            await relay.close()
            await http.close()
            await pool.close()

    app = Litestar(
        route_handlers=[
            OpenAIController, ResponsesController, EmbeddingsController, FineTuningController, BatchesController,
            AdapterReleasesController, KeysController, AccountController, AdminController, SystemController,
            AuditLogsController,
            OperatorAuditLogsController, WebhookEndpointsController, WebhookEventTypesController,
            ProjectsController,
            DashboardController, static_files,
            # Uploads get their own, larger body limit, enforced on the bytes as they stream in.
            Router("/", route_handlers=[AdaptersController, DashboardUploadController],
                   request_max_body_size=settings.max_upload_bytes),
            Router("/", route_handlers=[FilesController, DashboardFileUploadController],
                   request_max_body_size=settings.max_file_bytes + MULTIPART_OVERHEAD_BYTES),
        ],
        lifespan=[lifespan],
        dependencies=APP_DEPENDENCIES,  # the services and the request's context, for every route
        plugins=[StrictStructSchema()],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_request_bytes,
        openapi_config=openapi_config(),
        logging_config=None,
        debug=False,
    )
    # Outside Litestar's router and its exception handling, so every request has its context, its
    # x-request-id and its log line — those no route matches (404, 405) or whose body is too large (413) too.
    # The audit layer inside it: it needs the request's context (who acts) and the route Litestar matched.
    app.asgi_handler = context_middleware(metrics)(audit_layer(app.asgi_handler, lambda: app.state.services))
    return app
