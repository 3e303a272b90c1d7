"""A worker's ``GET /lorafleet/state``: one schema for the worker that answers it, the supervisor beside
it and the gateway's registry that polls it.

Every field is required and typed strictly, so a renamed or missing key is a decode error the poller
logs, never a silent 0 or []. Unknown keys are allowed: a newer worker may report more than an older
gateway reads.
"""

from __future__ import annotations

import msgspec


class AdapterResidency(msgspec.Struct, kw_only=True, frozen=True):
    """Adapter ids (``adp_…``) by where they are on the worker."""

    slots: list[str]        # in the engine's LoRA slots (on the accelerator)
    cpu: list[str]          # in the engine's CPU LRU
    pinned: list[str]       # pinned in the engine by the operator
    disk: list[str]         # in the worker's disk cache
    disk_pinned: list[str]  # pinned in the disk cache
    running: list[str]      # used by a request running now


class WorkerStateReport(msgspec.Struct, kw_only=True, frozen=True):
    in_flight: int          # requests inside the worker now
    served: int             # requests it has finished since it started
    idle_seconds: float     # since its last request finished
    running: float          # vLLM's gauges: requests running, waiting, KV cache in use (0..1)
    waiting: float
    kv_cache_usage: float
    max_loras: int          # the engine's LoRA slots and CPU LRU size
    max_cpu_loras: int
    adapters: AdapterResidency


encode_report = msgspec.json.Encoder().encode
decode_report = msgspec.json.Decoder(WorkerStateReport).decode
