"""What one admitted request costs: its token counts as they arrive, and its one ledger row.

The relay feeds the meter the usage the engine reports (on every chunk of a stream, so a cut
stream is still exact) and calls :meth:`Meter.finish` with the request's :class:`Outcome` — the
one path from an outcome to the ledger row, taken exactly once whatever happens (success, engine
refusal, worker failure, client gone). ``finish`` is synchronous so it also runs in cleanup code
under cancellation; it records the ledger row (kept as :attr:`Meter.row`) and metrics, then runs
the ``on_finish`` callbacks: what admission and routing held is released, and the request's
context records the row for its log line (the meter never writes into the context).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lorafleet.billing.ledger_row import Endpoint, LedgerRow, Outcome
from lorafleet.billing.pricing import Price, cost_pico_usd, micro_usd_text
from lorafleet.gateway.metering.writer import LedgerWriter
from lorafleet.gateway.metrics import GatewayMetrics


@dataclass(slots=True, frozen=True)
class Billable:
    """Who pays for a request and at what price; fixed before it is routed."""

    request_id: str
    tenant_id: str
    api_key_id: str
    base_model_id: str
    base_model_name: str
    model: str                  # as the client named it
    adapter_id: str | None
    endpoint: Endpoint
    streamed: bool
    price: Price | None         # the version in effect when the request started
    batch_id: str | None = None  # a batch line's batch: priced at the batch discount
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    started: float = field(default_factory=time.perf_counter)


class Meter:
    def __init__(self, billable: Billable, ledger: LedgerWriter, metrics: GatewayMetrics) -> None:
        self.billable = billable
        self._ledger = ledger
        self._metrics = metrics
        self._releases: list[Callable[[], None]] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_prompt_tokens = 0     # of the prompt, served from the engine's prefix cache
        self.ttft: float | None = None
        self.worker_url: str | None = None
        self.held = False                 # waited for a worker to wake (or to appear)
        self.residency: int | None = None  # where the adapter was on the chosen worker (placement's tiers)
        self.row: LedgerRow | None = None  # once finished

    def on_finish(self, release: Callable[[], None]) -> None:
        """Run ``release`` when the request is over and its row recorded (a concurrency slot, a worker's
        in-flight count, the context's log fields)."""
        self._releases.append(release)

    def observe_usage(self, usage: dict[str, Any] | None) -> None:
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
            details = usage.get("prompt_tokens_details") or {}
            cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
            self.cached_prompt_tokens = min(max(cached, 0), self.prompt_tokens)

    @property
    def cost_pico(self) -> int:
        """The exact cost so far, in pico-USD: what the ledger row records."""
        billable = self.billable
        return cost_pico_usd(billable.price, self.prompt_tokens, self.completion_tokens,
                             adapter=billable.adapter_id is not None, cached_prompt_tokens=self.cached_prompt_tokens,
                             batch=billable.batch_id is not None)

    @property
    def cost(self) -> str:
        """The exact cost as decimal micro-USD text (``0.1``): the cost header's and usage's value."""
        return micro_usd_text(self.cost_pico)

    def first_token(self) -> None:
        if self.ttft is None:
            billable = self.billable
            self.ttft = time.perf_counter() - billable.started
            self._metrics.observe_ttft(billable.base_model_name, billable.adapter_id is not None, self.ttft,
                                       residency=self.residency if billable.adapter_id else None, held=self.held)

    @property
    def finished(self) -> bool:
        return self.row is not None

    def finish(self, outcome: Outcome, http_status: int) -> None:
        """Record the ledger row — once, whatever calls it first."""
        if self.row is not None:
            return
        billable = self.billable
        duration = time.perf_counter() - billable.started
        ttft_ms = None if self.ttft is None else round(self.ttft * 1000)
        self.row = row = LedgerRow(
            request_id=billable.request_id, tenant_id=billable.tenant_id, api_key_id=billable.api_key_id,
            base_model_id=billable.base_model_id, model=billable.model, endpoint=billable.endpoint, outcome=outcome,
            http_status=http_status, streamed=billable.streamed, prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens, worker_url=self.worker_url, started_at=billable.started_at,
            finished_at=billable.started_at + dt.timedelta(seconds=duration), ttft_ms=ttft_ms,
            duration_ms=round(duration * 1000), adapter_id=billable.adapter_id, cost_pico_usd=self.cost_pico,
            price_id=billable.price.id if billable.price else None, cached_prompt_tokens=self.cached_prompt_tokens,
            batch_id=billable.batch_id,
        )
        self._ledger.record(row)
        self._metrics.observe_completion(outcome, self.prompt_tokens, self.completion_tokens, billable.base_model_id)
        for release in self._releases:
            release()
        self._releases.clear()
