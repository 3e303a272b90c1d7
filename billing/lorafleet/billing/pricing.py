"""Prices and the one rounding rule that turns tokens into micro-USD.

A price is quoted per million tokens in integer micro-USD, so the exact cost of a request is an
integer count of 10⁻¹² USD. It is rounded once, per request, half up to a whole micro-USD:

    cost = (prompt × prompt_price + completion × completion_price
            + [adapter] (prompt + completion) × surcharge + 500_000) // 1_000_000

Invoice lines and usage sums add these per-request costs, so every total equals the ledger to the
micro-dollar; a line's ``tokens × unit price`` can differ from its amount by at most half a
micro-dollar per request.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MICRO_PER_MTOK_DIVISOR = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    id: int
    base_model_id: str
    prompt: int          # micro-USD per million prompt tokens
    completion: int      # micro-USD per million completion tokens
    adapter_surcharge: int  # micro-USD per million tokens, adapter requests only
    effective_at: dt.datetime


def price_from_row(row: Mapping[str, Any]) -> Price:
    return Price(id=row["id"], base_model_id=row["base_model_id"], prompt=row["prompt_micro_usd_per_mtok"],
                 completion=row["completion_micro_usd_per_mtok"],
                 adapter_surcharge=row["adapter_surcharge_micro_usd_per_mtok"], effective_at=row["effective_at"])


def cost_micro_usd(price: Price | None, prompt_tokens: int, completion_tokens: int, *, adapter: bool) -> int:
    """The cost of one request under ``price`` (no price: free), rounded half up."""
    if price is None:
        return 0
    exact = prompt_tokens * price.prompt + completion_tokens * price.completion
    if adapter:
        exact += (prompt_tokens + completion_tokens) * price.adapter_surcharge
    return (exact + MICRO_PER_MTOK_DIVISOR // 2) // MICRO_PER_MTOK_DIVISOR


def worst_case_cost(price: Price | None, prompt_tokens: int, completion_tokens: int, context_length: int | None,
                    *, adapter: bool) -> int:
    """Most a request may cost: its bounds, clamped so prompt + completion fits the context.

    The engine never runs more than ``context_length`` tokens per sequence, so of the two bounds
    the one with the cheaper price gives way first (that is the maximum of a linear cost over the
    feasible region). ``context_length`` None: several sequences, bounds taken as they are.
    """
    if price is None:
        return 0
    excess = 0 if context_length is None else prompt_tokens + completion_tokens - context_length
    if excess > 0:
        if price.prompt <= price.completion:
            prompt_tokens -= min(excess, prompt_tokens)
        else:
            completion_tokens -= min(excess, completion_tokens)
    return cost_micro_usd(price, prompt_tokens, completion_tokens, adapter=adapter)


class PriceBook:
    """Every price version, per base model, ordered by effective time; replaced wholesale on refresh."""

    def __init__(self, prices: list[Price] | None = None) -> None:
        self._by_model: dict[str, tuple[list[dt.datetime], list[Price]]] = {}
        for price in sorted(prices or (), key=lambda p: (p.base_model_id, p.effective_at)):
            times, versions = self._by_model.setdefault(price.base_model_id, ([], []))
            times.append(price.effective_at)
            versions.append(price)

    def at(self, base_model_id: str, when: dt.datetime) -> Price | None:
        """The version in effect at ``when``: the latest whose effective time is not after it."""
        entry = self._by_model.get(base_model_id)
        if entry is None:
            return None
        times, versions = entry
        index = bisect.bisect_right(times, when) - 1
        return versions[index] if index >= 0 else None
