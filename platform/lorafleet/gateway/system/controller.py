from __future__ import annotations

import hmac
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import Provide
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lorafleet.core.errors import AuthenticationFailed, ServiceUnavailable
from lorafleet.db import queries
from lorafleet.gateway.dependencies import provide_services
from lorafleet.gateway.routing import worker_label
from lorafleet.gateway.services import Services


class SystemController(Controller):
    tags = ["System"]
    include_in_schema = True
    dependencies = {"services": Provide(provide_services)}

    @get("/healthz", operation_id="health", summary="The process is alive.")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", operation_id="ready", summary="The database answers and at least one worker is ready.")
    async def readyz(self, services: Services) -> dict[str, Any]:
        try:
            await services.pool.fetchval(queries.ping)
        except Exception:
            raise ServiceUnavailable("The database is unreachable.", code="database_unavailable") from None
        if not services.registry.any_ready():
            raise ServiceUnavailable("No worker is ready.", code="no_worker_ready")
        workers = [w.url for w in services.registry.workers() if w.ready]
        return {"status": "ready", "workers_ready": len(workers)}

    @get("/metrics", operation_id="metrics", summary="Prometheus metrics (bearer LORAFLEET_METRICS_TOKEN when set).",
         media_type=CONTENT_TYPE_LATEST)
    async def metrics(self, request: Request, services: Services) -> Response[bytes]:
        require_metrics_token(services, request)
        metrics = services.metrics
        workers = services.registry.workers()
        metrics.workers_known.set(len(workers))
        metrics.workers_ready.set(sum(w.ready for w in workers))
        metrics.worker_adapters.clear()
        for worker in workers:
            metrics.worker_adapters.labels(worker_label(worker.url)).set(worker.registered_adapters)
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
