"""Prometheus metrics of the gateway, on a registry of its own (one per app, so tests can build several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


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
        # Labels never name a tenant's adapter or a worker's address: /metrics may be scraped by
        # whoever operates the monitoring, not only by the platform's operator.
        self.ttft_seconds = Histogram(
            "lorafleet_time_to_first_token_seconds", "Time from request to the first generated token sent, by base "
            "model and whether an adapter served it.",
            ["base_model", "kind"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.tokens = Counter(
            "lorafleet_tokens", "Tokens metered into the ledger.", ["kind"], registry=self.registry
        )
        self.completions = Counter(
            "lorafleet_completions", "Admitted completion requests by outcome.", ["outcome"], registry=self.registry
        )
        self.workers_ready = Gauge("lorafleet_workers_ready", "Workers answering and serving their base model.", registry=self.registry)
        self.workers_known = Gauge("lorafleet_workers_known", "Workers in the registry with a recent heartbeat.", registry=self.registry)
        self.worker_adapters = Gauge(
            "lorafleet_worker_adapters_registered", "Adapters each worker's engine has resolved and not unloaded "
            "(the engine tier; the worker's own /metrics has the disk tier, vLLM's lora_requests_info the running one).",
            ["worker_id"], registry=self.registry,
        )
        self.ledger_queue = Gauge("lorafleet_ledger_queue_rows", "Usage rows waiting to be written.", registry=self.registry)
