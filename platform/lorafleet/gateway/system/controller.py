"""Probes and metrics: ``/livez`` (``/healthz``), ``/readyz``, ``/metrics``."""

from __future__ import annotations

import hmac
from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, get
from litestar.di import Provide
from litestar.params import Parameter
from lorafleet.core.errors import AuthenticationFailed, ServiceUnavailable
from lorafleet.db import queries
from lorafleet.gateway.context import provide_context
from lorafleet.gateway.dependencies import Context
from lorafleet.gateway.services import Services
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct, kw_only=True):
    status: str
    database: str
    workers_ready: int


class SystemController(Controller):
    tags = ["System"]
    dependencies = {"context": Provide(provide_context)}

    @get("/livez", operation_id="live", summary="The process is alive (liveness probe).")
    async def livez(self) -> Health:
        return Health("ok")

    @get("/healthz", include_in_schema=False)  # the older name of /livez, kept for existing probes
    async def healthz(self) -> Health:
        return Health("ok")

    @get("/readyz", operation_id="ready",
         summary="The gateway can serve: the database answers (with workers=1: and a worker is ready).")
    async def readyz(self, context: Context,
                     workers: Annotated[int, Parameter(ge=0, le=1, description="1: also require a ready worker.")] = 0,
                     ) -> Readiness:
        services = context.services
        try:
            await services.pool.fetchval(queries.ping, timeout=2)
        except Exception:  # noqa: BLE001 - any failure to answer is "not ready"
            raise ServiceUnavailable("The database is unreachable.", code="database_unavailable") from None
        ready = sum(worker.ready for worker in services.registry.workers())
        if workers and not ready:
            raise ServiceUnavailable("No worker is ready.", code="no_worker_ready")
        return Readiness(status="ready", database="ok", workers_ready=ready)

    @get("/metrics", operation_id="metrics", summary="Prometheus metrics (bearer LORAFLEET_METRICS_TOKEN when set).",
         media_type=CONTENT_TYPE_LATEST)
    async def metrics(self, request: Request, context: Context) -> Response[bytes]:
        services = context.services
        require_metrics_token(services, request)
        metrics = services.metrics
        workers = services.registry.workers()
        metrics.workers_known.set(len(workers))
        metrics.workers_ready.set(sum(w.ready for w in workers))
        metrics.worker_adapters.clear()
        for worker in workers:
            metrics.worker_adapters.labels(worker.id).set(worker.resident_adapters)
        metrics.ledger_queue.set(services.ledger.queued)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def require_metrics_token(services: Services, request: Request) -> None:
    """Operators may protect /metrics (and /autoscaling) with a bearer token of their own."""
    expected = services.settings.metrics_token
    if not expected:
        return
    presented = request.headers.get("authorization", "")
    if not hmac.compare_digest(presented.encode(), f"Bearer {expected}".encode()):
        raise AuthenticationFailed("This endpoint needs the metrics token (Authorization: Bearer …).",
                                   code="invalid_metrics_token")
