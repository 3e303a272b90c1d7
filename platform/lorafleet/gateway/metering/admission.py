"""Admission: rate limits, concurrency caps and budget reservation before anything reaches a worker.

Two layers:

- **Every tenant**, in this gateway's memory: at most ``tenant_max_concurrent_sequences``
  sequences (``n`` × prompts) in flight, so one tenant cannot fill the engines for everyone even
  without billing limits. Per gateway process (a fleet of N gateways allows N times as many).
- **Metered tenants** (any rate limit, concurrency cap, spend limit or prepaid credit), in
  PostgreSQL: ``lorafleet_admit`` (migrations/0003_money.sql) checks and records in one
  transaction, so several gateways share exact limits. The reservation it makes is settled by the
  request's ledger row (the same statement that inserts it) or, if this gateway dies, released by
  another gateway's sweeper. Its verdicts are :class:`Verdict`, matched exhaustively. One round
  trip per metered request (docs/architecture.md, "When one PostgreSQL's admission is the limit").

By default that transaction commits without waiting for its WAL flush: the flush was most of
admission's time, and what a crash could lose is only reservations (README "Admission and
durability"); ledger rows always wait for theirs.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import assert_never

import asyncpg
from lorafleet.billing.pricing import Price, worst_case_cost
from lorafleet.core.errors import InsufficientQuota, RateLimited, ServiceUnavailable
from lorafleet.db import DATABASE_UNAVAILABLE, queries
from lorafleet.gateway.auth import Principal
from lorafleet.gateway.metering.ratelimit import rate_limit_headers
from lorafleet.gateway.metering.refusals import RefusalCounter


class Verdict(enum.StrEnum):
    """Every answer ``lorafleet_admit`` can give (a unit test reads them off the SQL function)."""

    ADMITTED = "admitted"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_TOKENS = "too_many_tokens"
    TOO_MANY_CONCURRENT = "too_many_concurrent"
    SPEND_LIMIT = "spend_limit"
    INSUFFICIENT_CREDIT = "insufficient_credit"
    NO_ACCOUNT = "no_account"


@dataclass(frozen=True, slots=True)
class Demand:
    """The most a request can use, known before it runs (openai/bounds.py)."""

    prompt_tokens: int        # all prompts together
    completion_tokens: int    # all choices together
    sequences: int            # prompts × n
    context_length: int       # of the base model

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Admitted:
    headers: dict[str, str]
    release: Callable[[], None]   # call once the request is over


class TenantSequences:
    """Sequences in flight per tenant in this gateway, under a cap."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._in_flight: Counter[str] = Counter()

    def acquire(self, tenant_id: str, sequences: int) -> Callable[[], None]:
        held = self._in_flight[tenant_id]
        if self._cap and held and held + sequences > self._cap:
            raise RateLimited(
                f"Too many sequences in flight for this account ({held} running; at most {self._cap} at once); "
                "retry when one finishes.", code="concurrency_limit_exceeded", headers={"Retry-After": "1"})
        self._in_flight[tenant_id] = held + sequences
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                left = self._in_flight[tenant_id] - sequences
                if left:
                    self._in_flight[tenant_id] = left
                else:
                    del self._in_flight[tenant_id]

        return release


class Admission:
    def __init__(self, pool: asyncpg.Pool, gateway_id: str, refusals: RefusalCounter | None = None, *,
                 synchronous_commit: bool = False, tenant_max_sequences: int = 0) -> None:
        self._pool = pool
        self._gateway_id = gateway_id
        self._refusals = refusals
        self._commit_mode = "on" if synchronous_commit else "off"
        self.sequences = TenantSequences(tenant_max_sequences)

    async def admit(self, principal: Principal, request_id: str, demand: Demand, price: Price | None,
                    *, adapter: bool, batch: bool = False) -> Admitted:
        release = self.sequences.acquire(principal.tenant_id, demand.sequences)
        if not principal.metered:
            return Admitted({}, release)  # no limits: no database round trip
        try:
            amount = worst_case_cost(price, demand.prompt_tokens, demand.completion_tokens,
                                     demand.context_length if demand.sequences == 1 else None, adapter=adapter,
                                     batch=batch)
            return Admitted(await self._admit_one(principal, request_id, demand, amount), release)
        except BaseException:
            release()
            raise

    async def _admit_one(self, principal: Principal, request_id: str, demand: Demand, amount: int) -> dict[str, str]:
        try:
            row = await self._pool.fetchrow(queries.admit_request, request_id, principal.tenant_id, principal.key_id,
                                            self._gateway_id, amount, demand.tokens, self._commit_mode)
        except DATABASE_UNAVAILABLE:
            raise _billing_unavailable() from None
        return self._verdict(row, principal, demand)

    async def admit_read(self, principal: Principal) -> dict[str, str]:
        """A read of stored data (a stored response, its input items): one request against the key's
        requests per minute, no tokens and no money; the rate-limit headers, or the 429 raised."""
        if not principal.metered:
            return {}  # no limits: no database round trip
        try:
            row = await self._pool.fetchrow(queries.take_read_request, principal.key_id)
        except DATABASE_UNAVAILABLE:
            raise _billing_unavailable() from None
        return self._verdict(row, principal, Demand(0, 0, 0, 0))

    def _verdict(self, row: asyncpg.Record, principal: Principal, demand: Demand) -> dict[str, str]:
        """The rate-limit headers of an admitted request, or the refusal raised."""
        headers = rate_limit_headers(row)
        verdict = Verdict(row["verdict"])
        if verdict is not Verdict.ADMITTED and self._refusals is not None:
            quota = verdict in (Verdict.SPEND_LIMIT, Verdict.INSUFFICIENT_CREDIT, Verdict.NO_ACCOUNT)
            self._refusals.count(principal.tenant_id, 402 if quota else 429)
        match verdict:
            case Verdict.ADMITTED:
                return headers
            case Verdict.RATE_LIMITED:
                headers["Retry-After"] = str(max(1, math.ceil(row["retry_after_ms"] / 1000)))
                headers["retry-after-ms"] = str(row["retry_after_ms"])
                raise RateLimited("Rate limit reached for this API key; retry after the time in the Retry-After "
                                  "header.", headers=headers)
            case Verdict.TOO_MANY_TOKENS:
                raise RateLimited(
                    f"This request may use up to {demand.tokens} tokens (prompt bound plus max_tokens), more than this "
                    f"key's limit of {row['tokens_limit']} tokens per minute; lower max_tokens or shorten the prompt.",
                    code="request_too_large_for_rate_limit", headers=headers)
            case Verdict.TOO_MANY_CONCURRENT:
                raise RateLimited("Too many concurrent requests for this account; retry when one finishes.",
                                  code="concurrency_limit_exceeded", headers={**headers, "Retry-After": "1"})
            case Verdict.SPEND_LIMIT:
                raise InsufficientQuota("This request could exceed your monthly spend limit; raise the limit or lower "
                                        "max_tokens.")
            case Verdict.INSUFFICIENT_CREDIT:
                raise InsufficientQuota("You have run out of credits for this request; add credits or lower "
                                        "max_tokens.")
            case Verdict.NO_ACCOUNT:
                raise InsufficientQuota("This account has no billing record; contact the operator.",
                                        code="no_billing_account")
            case _:
                assert_never(verdict)


def _billing_unavailable() -> ServiceUnavailable:
    # Fail closed: without the database this gateway cannot know the budget's headroom.
    return ServiceUnavailable("Billing is temporarily unavailable for this account; retry shortly.",
                              code="billing_unavailable")

