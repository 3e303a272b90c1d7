"""Probes and metrics: ``/livez`` (``/healthz``), ``/readyz``, ``/metrics``."""

from __future__ import annotations

import hmac
from typing import Annotated

import msgspec
from litestar import Controller, Request, Response, get
from litestar.params import FromPath, QueryParameter
from lorafleet.core.errors import AuthenticationFailed, NotFound, ServiceUnavailable
from lorafleet.db import queries
from lorafleet.gateway.dependencies import AppServices
from lorafleet.gateway.error_specs import error_responses
from lorafleet.gateway.fleet.autoscaling import ModelSignals, SignalsList, model_signals
from lorafleet.gateway.openapi import METRICS_SECURITY
from lorafleet.gateway.services import Services
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

# Litestar appends "; charset=utf-8" to text/* types itself: the exposition format's type without it.
_METRICS_MEDIA_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct, kw_only=True):
    status: str
    database: str
    workers_ready: int


class SystemController(Controller):
    tags = ["System"]

    @get("/livez", operation_id="live", summary="The process is alive (liveness probe).")
    async def livez(self) -> Health:
        return Health("ok")

    @get("/healthz", include_in_schema=False)  # the older name of /livez, kept for existing probes
    async def healthz(self) -> Health:
        return Health("ok")

    @get("/readyz", operation_id="ready", responses=error_responses(400, 503),
         summary="The gateway can serve: the database answers (with workers=1: and a worker is ready).")
    async def readyz(self, services: AppServices,
                     workers: Annotated[int, QueryParameter(ge=0, le=64, description="Also require this many ready "
                                                                          "workers.")] = 0,
                     ) -> Readiness:
        try:
            await services.pool.fetchval(queries.ping, timeout=2)
        except Exception:  # noqa: BLE001 - any failure to answer is "not ready"
            raise ServiceUnavailable("The database is unreachable.", code="database_unavailable") from None
        ready = sum(worker.ready for worker in services.registry.workers())
        if ready < workers:
            raise ServiceUnavailable(f"{ready} of {workers} workers are ready.", code="no_worker_ready")
        return Readiness(status="ready", database="ok", workers_ready=ready)

    @get("/autoscaling", operation_id="autoscaling", tags=["Autoscaling"], responses=error_responses(401),
         security=METRICS_SECURITY,
         summary="Per base model: demand and desired replicas, for KEDA's metrics-api scaler or an HPA "
                 "(bearer LORAFLEET_METRICS_TOKEN when set).")
    async def autoscaling(self, request: Request, services: AppServices) -> SignalsList:
        require_metrics_token(services, request)
        return SignalsList(data=await _signals(services))

    @get("/autoscaling/{base_model:str}", operation_id="autoscalingModel", tags=["Autoscaling"],
         security=METRICS_SECURITY,
         responses=error_responses(400, 401, 404),
         summary="One base model's demand and desired replicas (404 for a model no worker ever served).")
    async def autoscaling_model(self, base_model: FromPath[str], request: Request, services: AppServices) -> ModelSignals:
        require_metrics_token(services, request)
        for signals in await _signals(services):
            if signals.base_model == base_model:
                return signals
        raise NotFound(f"no base model named {base_model[:200]!r}", param="base_model")

    @get("/metrics", operation_id="metrics", security=METRICS_SECURITY,
         summary="Prometheus metrics (bearer LORAFLEET_METRICS_TOKEN when set).",
         media_type=CONTENT_TYPE_LATEST, responses=error_responses(401))
    async def metrics(self, request: Request, services: AppServices) -> Response[bytes]:
        require_metrics_token(services, request)
        metrics = services.metrics
        for gauge in (*metrics.model.values(), metrics.model_workers):
            gauge.clear()
        for signals in await _signals(services):
            for name, gauge in metrics.model.items():
                gauge.labels(signals.base_model).set(getattr(signals, name.removeprefix("requests_")))
            metrics.model_workers.labels(signals.base_model, "ready").set(signals.ready_workers)
            metrics.model_workers.labels(signals.base_model, "asleep").set(signals.asleep_workers)
        workers = services.registry.workers()
        metrics.workers_known.set(len(workers))
        metrics.workers_ready.set(sum(w.ready for w in workers))
        metrics.worker_adapters.clear()
        for worker in workers:
            metrics.worker_adapters.labels(worker.id).set(worker.resident_adapters)
        metrics.ledger_queue.set(services.ledger.queued)
        return Response(generate_latest(metrics.registry), media_type=_METRICS_MEDIA_TYPE)


def require_metrics_token(services: Services, request: Request) -> None:
    """Operators may protect /metrics (and /autoscaling) with a bearer token of their own."""
    expected = services.settings.metrics_token
    if not expected:
        return
    presented = request.headers.get("authorization", "")
    if not hmac.compare_digest(presented.encode(), f"Bearer {expected}".encode()):
        raise AuthenticationFailed("This endpoint needs the metrics token (Authorization: Bearer …).",
                                   code="invalid_metrics_token")


async def _signals(services: Services) -> list[ModelSignals]:
    settings = services.settings
    return await model_signals(services.pool, services.catalog, services.registry, services.metrics.token_rate,
                               services.holds,
                               target_concurrency=settings.autoscale_target_concurrency,
                               idle_seconds=settings.autoscale_idle_seconds,
                               gateway_dead_after=settings.gateway_dead_after_seconds)
