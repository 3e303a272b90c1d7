"""Prices, exact costs, and the one rounding rule that turns them into whole micro-USD.

A price is quoted per million tokens in integer micro-USD, so the exact cost of a request is an
integer count of pico-USD (10⁻¹² USD) — no rounding at all:

    cost_pico = (prompt − cached) × prompt_price + cached × cached_prompt_price
                + completion × completion_price + [adapter] (prompt + completion) × surcharge

A batch line (the Batch API) costs that amount less the price version's batch discount, in basis
points, rounded half up to whole pico-USD (the only rounding below a micro-dollar, at most half a
pico-dollar per line):

    batch_cost_pico = (cost_pico × (10000 − discount_bps) + 5000) // 10000

``cached`` is the part of the prompt the engine found in its prefix cache (counted by the engine, in
whole KV blocks); the cached-prompt price defaults to the prompt price. The adapter surcharge
applies to every token, cached or not.

The ledger keeps that exact amount on every row (``usage_ledger.cost_pico_usd``), and so do the
rollups and the accounts' settled spend, so costs add up without loss: a million one-token requests
cost exactly what one million-token request costs. (Rounding each row, as before, made every
request under half a micro-dollar free: ten one-token completions at 0.1 µUSD/token cost 0.)

Rounding happens once per aggregate that is shown or billed in whole micro-USD — an invoice line
(tenant, period, model, adapter, price version), a ``/v1/usage`` bucket and its totals, a balance —
and the rule is **half up** on that aggregate's exact sum (:func:`micro_usd`):

    micro = (pico + 500_000) // 1_000_000

So an aggregate is within half a micro-dollar of its exact amount, whatever the number of rows in
it; an invoice's subtotal is the sum of its rounded lines (at most half a micro-dollar per line
from the exact sum). One request's own cost is never rounded: the ``x-lorafleet-cost-micro-usd``
header and the per-request ``usage.cost_micro_usd`` carry the exact amount as decimal text in
micro-USD (:func:`micro_usd_text`, e.g. ``0.1``).

Budgets round the other way, up (:func:`micro_usd_ceil`): admission compares whole micro-USD —
the settled spend (exact, rounded up) plus reservations (each request's exact worst case, rounded
up) against the spend limit or the credits granted — so spend can never pass a limit, not even by a
fraction; a tenant is refused at most a micro-dollar per request in flight early. Prepaid credits
decrease by the exact cost of each request; what is left is shown rounded half up.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PICO_PER_MICRO = 1_000_000  # also tokens per price quantum: µUSD per million tokens × tokens = pico-USD


@dataclass(frozen=True, slots=True)
class Price:
    id: int
    base_model_id: str
    prompt: int          # micro-USD per million prompt tokens
    completion: int      # micro-USD per million completion tokens
    adapter_surcharge: int  # micro-USD per million tokens, adapter requests only
    effective_at: dt.datetime
    cached_prompt: int | None = None  # micro-USD per million cached prompt tokens; None: the prompt price
    batch_discount_bps: int = 0       # a batch line's discount, in basis points of its cost

    @property
    def cached_prompt_price(self) -> int:
        return self.prompt if self.cached_prompt is None else self.cached_prompt


def price_from_row(row: Mapping[str, Any]) -> Price:
    return Price(id=row["id"], base_model_id=row["base_model_id"], prompt=row["prompt_micro_usd_per_mtok"],
                 completion=row["completion_micro_usd_per_mtok"],
                 adapter_surcharge=row["adapter_surcharge_micro_usd_per_mtok"], effective_at=row["effective_at"],
                 cached_prompt=row["cached_prompt_micro_usd_per_mtok"], batch_discount_bps=row["batch_discount_bps"])


def cost_pico_usd(price: Price | None, prompt_tokens: int, completion_tokens: int, *, adapter: bool,
                  cached_prompt_tokens: int = 0, batch: bool = False) -> int:
    """The exact cost of one request under ``price`` (no price: free), in pico-USD. ``cached_prompt_tokens``
    (part of ``prompt_tokens``) are priced at the cached-prompt price; a batch line gets the batch discount."""
    if price is None:
        return 0
    cached = min(max(cached_prompt_tokens, 0), prompt_tokens)
    exact = ((prompt_tokens - cached) * price.prompt + cached * price.cached_prompt_price
             + completion_tokens * price.completion)
    if adapter:
        exact += (prompt_tokens + completion_tokens) * price.adapter_surcharge
    return batch_price(exact, price.batch_discount_bps) if batch else exact


def batch_price(cost_pico: int, discount_bps: int) -> int:
    """``cost_pico`` less ``discount_bps`` basis points, half up to whole pico-USD."""
    return (cost_pico * (10_000 - discount_bps) + 5_000) // 10_000


def micro_usd(pico_usd: int) -> int:
    """An aggregate's exact amount in whole micro-USD, rounded half up: the one rounding rule."""
    return (pico_usd + PICO_PER_MICRO // 2) // PICO_PER_MICRO


def micro_usd_ceil(pico_usd: int) -> int:
    """Rounded up: for budgets, so a limit compared in whole micro-USD is never passed by a fraction."""
    return -(-pico_usd // PICO_PER_MICRO)


def micro_usd_text(pico_usd: int) -> str:
    """The exact amount as decimal micro-USD text: ``100000`` → ``0.1``, ``12000000`` → ``12``."""
    sign = "-" if pico_usd < 0 else ""
    whole, fraction = divmod(abs(pico_usd), PICO_PER_MICRO)
    return f"{sign}{whole}.{fraction:06d}".rstrip("0") if fraction else f"{sign}{whole}"


def worst_case_cost(price: Price | None, prompt_tokens: int, completion_tokens: int, context_length: int | None,
                    *, adapter: bool, batch: bool = False) -> int:
    """Most a request may cost, in whole micro-USD rounded up (what admission reserves): its bounds,
    clamped so prompt + completion fits the context.

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
    return micro_usd_ceil(cost_pico_usd(price, prompt_tokens, completion_tokens, adapter=adapter, batch=batch))


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


# ---- fine-tuning -------------------------------------------------------------------------------------

def training_cost_pico_usd(training_price: int, trained_tokens: int, validation_tokens: int = 0) -> int:
    """A fine-tuning job's exact cost: every token the trainer ran, trained or validated, at the price
    version's training price (micro-USD per million tokens). Validation passes take the trainer's time
    as training does (issue 28, finding 4), so they are priced alike."""
    return (max(trained_tokens, 0) + max(validation_tokens, 0)) * max(training_price, 0)


def training_worst_case_micro_usd(training_price: int, training_bytes: int, validation_bytes: int,
                                  epochs: int) -> int:
    """The most a job can cost, in whole micro-USD rounded up (what its create reserves). A file's bytes
    bound its tokens (a byte-level BPE token is at least one byte of text, and the JSON around each
    message is longer than the template's markers). Training runs the training file ``epochs`` times;
    validation runs at most one pass per epoch (sampled passes at epoch ends, the full pass at the end),
    each at most the validation file."""
    return micro_usd_ceil(training_cost_pico_usd(training_price, training_bytes * epochs, validation_bytes * epochs))
