"""Admission: rate limits, concurrency cap and budget reservation, one database round trip.

Keys whose tenant has no limit of any kind (the default) skip the database entirely. Everything
else calls ``lorafleet_admit`` (migrations/0003_money.sql), which checks and records in one
transaction, so several gateway processes share exact limits. The reservation it makes is
settled by the request's ledger row (same statement that inserts it) or, if this gateway dies,
released by another gateway's sweeper.

By default that transaction commits without waiting for its WAL flush: the flush was most of
admission's time, and what a crash could lose is only reservations (README "Admission and
durability"); ledger rows always wait for theirs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import asyncpg

from lorafleet.billing.pricing import Price, worst_case_cost
from lorafleet.core.errors import InsufficientQuota, RateLimited, ServiceUnavailable
from lorafleet.db import DATABASE_UNAVAILABLE, queries
from lorafleet.gateway.auth import Principal
from lorafleet.gateway.catalog import ResolvedModel
from lorafleet.gateway.openai.bounds import token_bounds
from lorafleet.gateway.openai.schemas import SamplingFields
from lorafleet.gateway.refusals import RefusalCounter


@dataclass(frozen=True, slots=True)
class Admitted:
    headers: dict[str, str]


NOT_METERED = Admitted({})
_QUOTA_VERDICTS = frozenset({"spend_limit", "insufficient_credit", "no_account"})


class Admission:
    def __init__(self, pool: asyncpg.Pool, gateway_id: str, refusals: RefusalCounter | None = None, *,
                 synchronous_commit: bool = False) -> None:
        self._pool = pool
        self._gateway_id = gateway_id
        self._refusals = refusals
        self._commit_mode = "on" if synchronous_commit else "off"

    async def admit(self, principal: Principal, request_id: str, raw: dict[str, Any], parsed: SamplingFields,
                    model: ResolvedModel, price: Price | None) -> Admitted:
        if not principal.metered:
            return NOT_METERED  # and no worst case to compute: it costs a JSON encode of the messages
        context = model.base.max_model_len
        bounds = token_bounds(raw, parsed, context)
        tokens = bounds.total
        amount_micro_usd = worst_case_cost(price, bounds.prompt, bounds.completion,
                                           context if bounds.single_sequence else None,
                                           adapter=model.adapter_id is not None)
        try:
            row = await self._pool.fetchrow(queries.admit_request, request_id, principal.tenant_id, principal.key_id,
                                            self._gateway_id, amount_micro_usd, tokens, self._commit_mode)
        except DATABASE_UNAVAILABLE:
            # Fail closed: without the database this gateway cannot know the budget's headroom.
            raise ServiceUnavailable("Billing is temporarily unavailable for this account; retry shortly.",
                                     code="billing_unavailable") from None
        headers = rate_limit_headers(row)
        verdict = row["verdict"]
        if verdict == "admitted":
            return Admitted(headers)
        if self._refusals is not None:
            self._refusals.count(principal.tenant_id, 402 if verdict in _QUOTA_VERDICTS else 429)
        if verdict == "rate_limited":
            headers["Retry-After"] = str(max(1, math.ceil(row["retry_after_ms"] / 1000)))
            headers["retry-after-ms"] = str(row["retry_after_ms"])
            raise RateLimited("Rate limit reached for this API key; retry after the time in the Retry-After header.",
                              headers=headers)
        if verdict == "too_many_tokens":
            raise RateLimited(
                f"This request may use up to {tokens} tokens (prompt bound plus max_tokens), more than this key's "
                f"limit of {row['tokens_limit']} tokens per minute; lower max_tokens or shorten the prompt.",
                code="request_too_large_for_rate_limit", headers=headers)
        if verdict == "too_many_concurrent":
            raise RateLimited("Too many concurrent requests for this account; retry when one finishes.",
                              code="concurrency_limit_exceeded", headers={**headers, "Retry-After": "1"})
        if verdict == "spend_limit":
            raise InsufficientQuota("This request could exceed your monthly spend limit; raise the limit or lower "
                                    "max_tokens.")
        if verdict == "insufficient_credit":
            raise InsufficientQuota("You have run out of credits for this request; add credits or lower max_tokens.")
        raise InsufficientQuota("This account has no billing record; contact the operator.", code="no_billing_account")


def rate_limit_headers(row: asyncpg.Record) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers OpenAI's clients read, for the limits this key has."""
    headers: dict[str, str] = {}
    for dimension in ("requests", "tokens"):
        limit = row[f"{dimension}_limit"]
        if limit is None or row[f"{dimension}_remaining"] is None:
            continue
        headers[f"x-ratelimit-limit-{dimension}"] = str(limit)
        headers[f"x-ratelimit-remaining-{dimension}"] = str(row[f"{dimension}_remaining"])
        headers[f"x-ratelimit-reset-{dimension}"] = duration_text(row[f"{dimension}_reset_ms"])
    return headers


def duration_text(milliseconds: int) -> str:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    milliseconds = max(0, int(milliseconds))
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    minutes, rest = divmod(milliseconds, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{seconds}" if minutes else seconds
