"""Prometheus metrics of the gateway, on a registry of its own (one per app, so tests can build several).

Labels never name a tenant's adapter or a worker's address: /metrics may be scraped by whoever
operates the monitoring, not only by the platform's operator. Label children used on every
request are cached: ``labels()`` takes a lock and walks a dict each time.
"""

from __future__ import annotations

from typing import Any

from lorafleet.gateway.fleet.autoscaling import TokenRate
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
RESIDENCY_LABELS = ("slot", "cpu", "disk", "cold")  # placement's IN_SLOT, IN_CPU, ON_DISK, COLD
MODEL_GAUGES = {
    "desired_replicas": "Workers the base model should have (GET /autoscaling's formula).",
    "requests_waiting": "Requests the base model's engines hold in their waiting queues.",
    "requests_running": "Requests the base model's engines are running.",
    "requests_held": "Requests gateways hold for a worker of the base model (asleep, waking or absent).",
    "kv_cache_usage": "Mean KV-cache use over the base model's ready workers (0..1).",
    "adapters_resident": "Adapters in the base model's engines (slots and CPU LRU).",
    "tokens_per_second": "Output tokens per second this gateway metered for the base model (last minute).",
}


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lorafleet_http_requests", "HTTP requests by route and status.", ["route", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "lorafleet_http_request_duration_seconds", "Time from request to the last byte of the response.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.ttft_seconds = Histogram(
            "lorafleet_time_to_first_token_seconds", "Time from request to the first generated token sent, by base "
            "model and whether an adapter served it.",
            ["base_model", "kind"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.adapter_ttft_seconds = Histogram(
            "lorafleet_adapter_ttft_seconds", "Time to first token of adapter requests, by where the adapter was on "
            "the worker that served it: slot, cpu, disk or cold (fetched from the blob store).",
            ["base_model", "residency"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.cold_start_seconds = Histogram(
            "lorafleet_cold_start_seconds", "Time to first token of requests that waited for a worker to wake "
            "(asleep, or scaled to zero → first token).", ["base_model"], buckets=_LATENCY_BUCKETS + (300, 600),
            registry=self.registry,
        )
        self.tokens = Counter("lorafleet_tokens", "Tokens metered into the ledger.", ["kind"], registry=self.registry)
        self.completions = Counter(
            "lorafleet_completions", "Admitted completion requests by outcome.", ["outcome"], registry=self.registry
        )
        self.upstream_retries = Counter(
            "lorafleet_upstream_retries", "Requests retried on another worker (or a fresh connection) before the "
            "first byte.", registry=self.registry)
        self.workers_ready = Gauge("lorafleet_workers_ready", "Workers answering and serving their base model.", registry=self.registry)
        self.workers_known = Gauge("lorafleet_workers_known", "Workers in the registry with a recent heartbeat.", registry=self.registry)
        self.worker_adapters = Gauge(
            "lorafleet_worker_adapters_registered", "Adapters each worker's engine holds (slots and CPU LRU).",
            ["worker_id"], registry=self.registry,
        )
        self.ledger_queue = Gauge("lorafleet_ledger_queue_rows", "Usage rows waiting to be written.", registry=self.registry)
        # Per base model, for autoscalers (the same numbers as GET /autoscaling; README "Autoscaling").
        self.model = {name: Gauge(f"lorafleet_model_{name}", help_text, ["base_model"], registry=self.registry)
                      for name, help_text in MODEL_GAUGES.items()}
        self.model_workers = Gauge("lorafleet_model_workers", "Workers of a base model by state.",
                                   ["base_model", "state"], registry=self.registry)
        self.token_rate = TokenRate()
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self._child(self.requests, route, str(status)).inc()
        self._child(self.request_seconds, route).observe(seconds)

    def observe_ttft(self, base_model: str, adapter: bool, seconds: float, *, residency: int | None = None,
                     held: bool = False) -> None:
        self._child(self.ttft_seconds, base_model, "adapter" if adapter else "base").observe(seconds)
        if residency is not None:
            self._child(self.adapter_ttft_seconds, base_model, RESIDENCY_LABELS[residency]).observe(seconds)
        if held:
            self._child(self.cold_start_seconds, base_model).observe(seconds)

    def observe_completion(self, outcome: str, prompt_tokens: int, completion_tokens: int,
                           base_model_id: str = "") -> None:
        self.token_rate.record(base_model_id, completion_tokens)
        self._child(self.completions, outcome).inc()
        self._child(self.tokens, "prompt").inc(prompt_tokens)
        self._child(self.tokens, "completion").inc(completion_tokens)
