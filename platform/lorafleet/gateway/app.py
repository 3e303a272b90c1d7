"""The gateway's app factory: resources in the lifespan, routes, errors, OpenAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from litestar import Litestar, Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from lorafleet.adapters.blobstore import make_blob_store
from lorafleet.adapters.sandbox import SandboxLimits
from lorafleet.adapters.service import AdapterService
from lorafleet.core.settings import Settings, get_settings
from lorafleet.db import create_pool
from lorafleet.db.migrate import migrate
from lorafleet.dashboard import DashboardController, DashboardUploadController, static_files
from lorafleet.gateway.adapters import AdaptersController
from lorafleet.gateway.admin import AdminController
from lorafleet.gateway.billing import BillingController
from lorafleet.core import ids
from lorafleet.gateway.admission import Admission
from lorafleet.gateway.auth import KeyAuthenticator
from lorafleet.gateway.throttle import FailureThrottle
from lorafleet.gateway.errors import EXCEPTION_HANDLERS
from lorafleet.gateway.keys import KeysController
from lorafleet.gateway.ledger import LedgerWriter
from lorafleet.gateway.metrics import GatewayMetrics
from lorafleet.gateway.presence import GatewayPresence
from lorafleet.gateway.refusals import RefusalCounter
from lorafleet.gateway.spool import LedgerSpool
from lorafleet.gateway.openai.controller import OpenAIController
from lorafleet.gateway.openai.relay import Relay
from lorafleet.gateway.request_context import request_context_middleware
from lorafleet.gateway.routing import WorkerRegistry
from lorafleet.gateway.catalog import ModelCatalog
from lorafleet.gateway.services import Services
from lorafleet.gateway.system import SystemController


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await migrate(settings.database_url)  # advisory-locked: safe with several gateways starting
        pool = await create_pool(settings.database_url, max_size=settings.db_pool_size)
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300), auto_decompress=False,
        )
        catalog = ModelCatalog(pool)
        registry = WorkerRegistry(pool, http, settings.internal_token, settings.worker_refresh_seconds, catalog)
        gateway_id = ids.gateway_id()
        ledger = LedgerWriter(pool, spool=LedgerSpool(settings.resolved_spool_dir, gateway_id))
        presence = GatewayPresence(pool, gateway_id, heartbeat_seconds=settings.gateway_heartbeat_seconds,
                                   dead_after_seconds=settings.gateway_dead_after_seconds,
                                   reservation_max_seconds=settings.reservation_max_seconds)
        refusals = RefusalCounter(pool)
        services = Services(
            settings=settings, pool=pool, http=http, metrics=metrics,
            auth=KeyAuthenticator(pool, settings.key_cache_seconds, stale_seconds=settings.auth_stale_seconds,
                                  throttle=FailureThrottle(settings.auth_failures_per_minute)),
            admission=Admission(pool, gateway_id, refusals,
                                synchronous_commit=settings.admission_synchronous_commit),
            presence=presence,
            catalog=catalog, registry=registry, ledger=ledger,
            relay=Relay(http, registry, ledger, metrics, settings.internal_token, settings.upstream_timeout_seconds),
            adapters=AdapterService(pool, make_blob_store(settings), SandboxLimits(
                max_files=settings.max_adapter_files, max_bytes=settings.max_upload_bytes)),
        )
        ledger.start()
        refusals.start()
        await presence.start()
        await registry.start()
        app.state.services = services
        try:
            yield
        finally:
            await registry.close()
            await ledger.close()  # every recorded row reaches the database (or the spool) before we exit
            await refusals.close()
            await presence.close()
            await http.close()
            await pool.close()

    return Litestar(
        route_handlers=[
            OpenAIController, KeysController, BillingController, AdminController, SystemController,
            DashboardController, static_files,
            # Uploads get their own, larger body limit, enforced on the bytes as they stream in.
            Router("/", route_handlers=[AdaptersController, DashboardUploadController],
                   request_max_body_size=settings.max_upload_bytes),
        ],
        lifespan=[lifespan],
        middleware=[request_context_middleware(metrics)],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_request_bytes,
        openapi_config=OpenAPIConfig(
            title="LoraFleet", version="0.1.0", path="/openapi", render_plugins=[SwaggerRenderPlugin()],
            description="OpenAI-compatible multi-LoRA inference with per-token billing.",
        ),
        logging_config=None,
        debug=False,
    )
