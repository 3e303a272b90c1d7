"""The worker's own routes inside vLLM's API server (a ``vllm.endpoint_plugins`` entry point).

All under ``/lorafleet/`` and behind the internal token (:mod:`lorafleet.worker.guard`):

- ``GET /lorafleet/state``: what the engine holds and does — adapters in its LoRA slots, in its
  CPU LRU, pinned, on the local disk cache; requests running and waiting; KV-cache use; requests
  in flight at the front door and seconds idle. Gateways poll it about once a second to route on
  residency; the supervisor polls it for the idle timer and the drain.
- ``POST /lorafleet/adapters/{id}/prewarm`` (``{"load": bool}``): fetch into the disk cache, and
  with ``load`` into the engine, so the first request is not a cold load.
- ``POST /lorafleet/adapters/{id}/pin`` / ``unpin``: keep an adapter in the engine and on disk.
- ``POST /lorafleet/adapters/{id}/unload``: forget an adapter now (deleted by its tenant).
- ``POST /lorafleet/sleep`` / ``wake``: vLLM's sleep mode, for the supervisor's idle timer on GPUs.

Slots and the CPU LRU live in the engine-core's worker processes; they are read with
``collective_rpc`` of a method :mod:`lorafleet.worker.plugin` installs there.
"""

import asyncio
from typing import Any

import structlog
from fastapi import (  # only ever imported inside vLLM's API server, which has FastAPI
    APIRouter,
    Request,
)
from fastapi.responses import JSONResponse, Response
from lorafleet.core.worker_state import AdapterResidency, WorkerStateReport, encode_report
from lorafleet.worker.activity import ACTIVITY

log = structlog.get_logger("lorafleet.worker.endpoints")

RESIDENCY_RPC = "lorafleet_lora_residency"
PIN_RPC = "lorafleet_pin_lora"      # (lora_int_id, pinned: bool): the CPU LRU only, never a compute slot
_RPC_TIMEOUT = 5.0
_ENGINE_GAUGES = {"running": "vllm:num_requests_running", "waiting": "vllm:num_requests_waiting",
                  "kv_cache_usage": "vllm:kv_cache_usage_perc"}


def _gauge(name: str) -> float:
    """Sum of an in-process Prometheus gauge's samples (vLLM's stat logger keeps them current)."""
    from prometheus_client import REGISTRY

    collector = REGISTRY._names_to_collectors.get(name)  # noqa: SLF001 - one gauge, not the whole registry
    if collector is None:
        return 0.0
    return sum(sample.value for metric in collector.collect() for sample in metric.samples
               if sample.name == name)


def _running_adapters() -> list[str]:
    """Adapters of the requests the engine runs now, from vLLM's ``lora_requests_info`` gauge (its
    latest sample: the gauge's value is the time it was set)."""
    from prometheus_client import REGISTRY

    collector = REGISTRY._names_to_collectors.get("vllm:lora_requests_info")  # noqa: SLF001
    if collector is None:
        return []
    latest = max((sample for metric in collector.collect() for sample in metric.samples), key=lambda s: s.value,
                 default=None)
    if latest is None:
        return []
    names = latest.labels.get("running_lora_adapters", "") + "," + latest.labels.get("waiting_lora_adapters", "")
    return sorted({name for name in names.split(",") if name.startswith("adp_")})


def _resolver():
    from vllm.lora.resolver import LoRAResolverRegistry

    try:
        return LoRAResolverRegistry.get_resolver("lorafleet")
    except KeyError:
        return None


class _ResidencyCache:
    """The engine's last residency answer, and what the engine had done when it was taken.

    An RPC wakes the engine's worker process, which then spins for a second (vLLM's message queue
    busy-waits after every read): polled once a second it would never sleep, and on a CPU worker it
    spins on the very core that runs inference. Slots and the CPU LRU only change when requests
    run or adapters come and go, so an idle engine is not asked again.
    """

    def __init__(self) -> None:
        self.stamp: tuple[int, int, frozenset[str]] | None = None
        self.answers: list[Any] = []


_CACHE = _ResidencyCache()


async def engine_residency(state: Any) -> dict[str, list[str]]:
    """Adapter ids (``adp_…``) in the engine's slots, CPU LRU and pinned set."""
    lora_requests = state.openai_serving_models.lora_requests
    names = {request.lora_int_id: name for name, request in lora_requests.items()}
    stamp = (ACTIVITY.served, ACTIVITY.in_flight, frozenset(lora_requests))
    if stamp != _CACHE.stamp or ACTIVITY.in_flight:
        try:
            _CACHE.answers = await state.engine_client.collective_rpc(RESIDENCY_RPC, timeout=_RPC_TIMEOUT)
            _CACHE.stamp = stamp
        except Exception as exc:  # an engine busy restarting: report what the disk knows
            log.warning("residency_rpc_failed", error=repr(exc)[:300])
            _CACHE.answers, _CACHE.stamp = [], None
    answers = _CACHE.answers
    tiers: dict[str, set[str]] = {"slots": set(), "cpu": set(), "pinned": set()}
    for answer in answers or ():
        for tier, ids in (answer or {}).items():
            tiers.setdefault(tier, set()).update(names[i] for i in ids if i in names)
    return {tier: sorted(ids) for tier, ids in tiers.items()}


class LoraFleetEndpoints:
    """vLLM endpoint plugin: routes on the app, and the app state they read."""

    name = "lorafleet"
    required_tasks = None

    def attach_router(self, app) -> None:
        router = APIRouter(prefix="/lorafleet", include_in_schema=False)

        @router.get("/state")
        async def state(request: Request) -> Response:
            app_state = request.app.state
            resolver = _resolver()
            residency = await engine_residency(app_state)
            running = _running_adapters()
            if resolver is not None and running:
                # The disk cache's recency follows use, not only resolution (vLLM resolves a name once).
                await asyncio.to_thread(resolver.cache.touch, running)
            config = app_state.vllm_config.lora_config
            report = WorkerStateReport(
                in_flight=ACTIVITY.in_flight, served=ACTIVITY.served, idle_seconds=round(ACTIVITY.idle_seconds(), 3),
                **{key: _gauge(name) for key, name in _ENGINE_GAUGES.items()},
                max_loras=config.max_loras if config else 0,
                max_cpu_loras=(config.max_cpu_loras or config.max_loras) if config else 0,
                adapters=AdapterResidency(
                    slots=residency.get("slots", []), cpu=residency.get("cpu", []), pinned=residency.get("pinned", []),
                    disk=resolver.cache.adapter_ids() if resolver else [],
                    disk_pinned=sorted(resolver.pinned) if resolver else [], running=running))
            return Response(content=encode_report(report), media_type="application/json")

        @router.post("/adapters/{adapter_id}/unload")
        async def unload(adapter_id: str, request: Request) -> JSONResponse:
            resolver = _resolver()
            removed = await forget_adapter(request.app.state, adapter_id)
            if resolver is not None:
                resolver.pinned.discard(adapter_id)
                await asyncio.to_thread(resolver.cache.remove, adapter_id)
            return JSONResponse({"adapter": adapter_id, "unloaded": removed})

        @router.post("/adapters/{adapter_id}/prewarm")
        async def prewarm(adapter_id: str, request: Request) -> JSONResponse:
            load = bool(request.query_params.get("load") in ("1", "true"))
            return await _prewarm(request.app.state, adapter_id, load=load, pin=False)

        @router.post("/adapters/{adapter_id}/pin")
        async def pin(adapter_id: str, request: Request) -> JSONResponse:
            return await _prewarm(request.app.state, adapter_id, load=True, pin=True)

        @router.post("/adapters/{adapter_id}/unpin")
        async def unpin(adapter_id: str, request: Request) -> JSONResponse:
            resolver = _resolver()
            if resolver is not None:
                resolver.pinned.discard(adapter_id)
            loaded = request.app.state.openai_serving_models.lora_requests.get(adapter_id)
            if loaded is not None:
                await request.app.state.engine_client.collective_rpc(PIN_RPC, timeout=_RPC_TIMEOUT,
                                                                     args=(loaded.lora_int_id, False))
                _CACHE.stamp = None
            return JSONResponse({"adapter": adapter_id, "pinned": False})

        @router.post("/sleep")
        async def sleep(request: Request) -> JSONResponse:
            """vLLM's sleep mode, level 1: weights offloaded, KV cache freed (the supervisor's idle timer)."""
            await request.app.state.engine_client.sleep(level=1)
            return JSONResponse({"asleep": True})

        @router.post("/wake")
        async def wake(request: Request) -> JSONResponse:
            await request.app.state.engine_client.wake_up()
            return JSONResponse({"asleep": False})

        app.include_router(router)

    async def init_state(self, engine_client, state, args) -> None:
        resolver = _resolver()
        if resolver is not None:
            resolver.attach(state)


async def forget_adapter(state: Any, adapter_id: str) -> bool:
    """Forget an adapter's name now: later requests re-resolve it (or get 404 once it is deleted).

    Its weights are not removed from the engine: requests already running on it must finish, and
    vLLM's own LRU drops the weights once nothing uses them.
    """
    models = state.openai_serving_models
    async with models.lora_resolver_lock[adapter_id]:
        return models.lora_requests.pop(adapter_id, None) is not None


async def _prewarm(state: Any, adapter_id: str, *, load: bool, pin: bool) -> JSONResponse:
    resolver = _resolver()
    if resolver is None or not adapter_id.startswith("adp_"):
        return JSONResponse({"error": {"message": "unknown adapter", "type": "invalid_request_error",
                                       "param": "adapter_id", "code": "not_found"}}, status_code=404)
    fetched = await resolver.prefetch(adapter_id)
    if fetched is None:
        return JSONResponse({"error": {"message": "unknown adapter", "type": "invalid_request_error",
                                       "param": "adapter_id", "code": "not_found"}}, status_code=404)
    loaded = False
    if load:
        result = await state.openai_serving_models.resolve_lora(adapter_id)
        loaded = hasattr(result, "lora_int_id")
        if pin and loaded:
            # vLLM's own pin_lora would also hold one of the few compute slots forever; a pinned
            # adapter only needs to stay in the CPU LRU (and on disk) to never be a cold load.
            resolver.pinned.add(adapter_id)
            await state.engine_client.collective_rpc(PIN_RPC, timeout=_RPC_TIMEOUT, args=(result.lora_int_id, True))
            _CACHE.stamp = None  # the engine's pinned set changed
    return JSONResponse({"adapter": adapter_id, "on_disk": True, "loaded": loaded, "pinned": pin and loaded})
