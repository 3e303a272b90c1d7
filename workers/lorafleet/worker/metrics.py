"""Adapter metrics of a worker, exported on the engine's own ``/metrics`` (same process registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class AdapterMetrics:
    def __init__(self) -> None:
        self.resolutions = Counter(
            "lorafleet_adapter_resolutions", "Adapters resolved for vLLM, by where the files came from "
            "(blob_store = a cold load, disk_cache = a hit).", ["source"],
        )
        self.resolve_seconds = Histogram(
            "lorafleet_adapter_resolve_seconds", "Time to resolve an adapter (database + files).", ["source"],
            buckets=_BUCKETS,
        )
        self.fetch_failures = Counter("lorafleet_adapter_fetch_failures",
                                      "Adapters that could not be fetched to this worker (blob store or disk).")
        self.evictions = Counter("lorafleet_adapter_disk_cache_evictions", "Adapters unloaded and deleted from disk.")
        self.disk_bytes = Gauge("lorafleet_adapter_disk_cache_bytes", "Bytes of adapters on the local disk cache.")
        self.disk_adapters = Gauge("lorafleet_adapter_disk_cache_adapters", "Adapters on the local disk cache.")
