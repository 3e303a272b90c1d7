"""Operator and tenant views of money: prices, credits, limits, balances.

A balance is derived from the account's exact settled spend (pico-USD) and shown in whole micro-USD
rounded half up once (billing/pricing.py), with the exact amounts beside it.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec
from lorafleet.billing.pricing import PICO_PER_MICRO, micro_usd
from lorafleet.core import ids
from lorafleet.core.errors import InvalidRequest, NotFound
from lorafleet.core.types import Page, page_of
from lorafleet.db import queries

_UNSET = msgspec.UNSET
MAX_KEY_LIMIT = 2**31 - 1  # a key's requests/min and tokens/min are PostgreSQL integers


class PriceView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    base_model_id: str
    base_model: str
    prompt_micro_usd_per_mtok: int
    completion_micro_usd_per_mtok: int
    adapter_surcharge_micro_usd_per_mtok: int
    effective_at: dt.datetime
    created_at: dt.datetime
    training_micro_usd_per_mtok: int = 0  # per million trained tokens of a fine-tuning job
    cached_prompt_micro_usd_per_mtok: int | None = None  # per million cached prompt tokens (≤ the prompt price)
    batch_discount_bps: int = 5000  # a batch line's discount, in basis points of its synchronous cost
    object: str = "price"


class Balance(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    tenant_name: str
    billing_mode: str
    currency: str
    period_start: dt.date
    period_spent_micro_usd: int
    period_spent_pico_usd: int          # exact
    monthly_spend_limit_micro_usd: int | None
    credit_granted_micro_usd: int
    credit_remaining_micro_usd: int
    credit_remaining_pico_usd: int      # exact
    reserved_micro_usd: int
    in_flight: int
    max_concurrent_requests: int | None
    object: str = "balance"


class CreditGrant(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant_id: str
    amount_micro_usd: int
    reason: str
    created_at: dt.datetime
    object: str = "credit_grant"


class KeyLimits(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant_id: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    object: str = "api_key_limits"


class AccountService:
    def __init__(self, db: asyncpg.Connection | asyncpg.Pool, currency: str = "usd") -> None:
        self._db = db
        self._currency = currency

    # ---- prices ---------------------------------------------------------------------------

    async def set_price(self, base_model: str, *, prompt: int, completion: int, adapter_surcharge: int = 0,
                        training: int = 0, cached_prompt: int | None = None, batch_discount_bps: int = 5000,
                        effective_at: dt.datetime | None = None) -> PriceView:
        model = await self._db.fetchrow(queries.get_base_model_by_name, base_model)
        if model is None:
            raise NotFound(f"no base model named {base_model!r}", param="base_model")
        for name, value in (("prompt_micro_usd_per_mtok", prompt), ("completion_micro_usd_per_mtok", completion),
                            ("adapter_surcharge_micro_usd_per_mtok", adapter_surcharge),
                            ("training_micro_usd_per_mtok", training),
                            ("cached_prompt_micro_usd_per_mtok", cached_prompt or 0)):
            if value < 0:
                raise InvalidRequest(f"{name} must be ≥ 0", param=name)
        if cached_prompt is not None and cached_prompt > prompt:
            raise InvalidRequest("cached_prompt_micro_usd_per_mtok must not exceed prompt_micro_usd_per_mtok (a cached "
                                 "prompt token is a discount, never a surcharge)", param="cached_prompt_micro_usd_per_mtok")
        if not 0 <= batch_discount_bps <= 10_000:
            raise InvalidRequest("batch_discount_bps must be between 0 and 10000 (basis points: 5000 is half price)",
                                 param="batch_discount_bps")
        if effective_at is not None and effective_at.tzinfo is None:
            raise InvalidRequest("effective_at needs a timezone (e.g. 2027-01-01T00:00:00Z)", param="effective_at")
        try:
            row = await self._db.fetchrow(queries.insert_price, model["id"], prompt, completion, adapter_surcharge,
                                          effective_at or dt.datetime.now(dt.UTC), training, cached_prompt,
                                          batch_discount_bps)
        except asyncpg.UniqueViolationError:
            raise InvalidRequest("a price for this model already takes effect at that time", param="effective_at") from None
        return PriceView(base_model=base_model, **dict(row))

    async def list_prices(self) -> list[PriceView]:
        return [PriceView(**dict(row)) for row in await self._db.fetch(queries.list_prices)]

    async def page_prices(self, *, after: int | None = None, limit: int = 100) -> Page[PriceView]:
        rows = await self._db.fetch(queries.page_prices, after, limit + 1)
        return page_of([PriceView(**dict(row)) for row in rows], limit)

    # ---- accounts -------------------------------------------------------------------------

    async def balance(self, tenant_id: str) -> Balance:
        row = await self._db.fetchrow(queries.get_accounts, tenant_id)
        if row is None:
            raise NotFound(f"no tenant {tenant_id!r}", param="tenant")
        return self._balance(row)

    async def balances(self) -> list[Balance]:
        return [self._balance(row) for row in await self._db.fetch(queries.get_accounts, None)]

    async def page_balances(self, *, after: str | None = None, limit: int = 100) -> Page[Balance]:
        rows = await self._db.fetch(queries.page_accounts, after, limit + 1)
        return page_of([self._balance(row) for row in rows], limit)

    def _balance(self, row: asyncpg.Record) -> Balance:
        period_spent = int(row["period_spent_pico_usd"])
        # Credits are consumed by spend as it happens (prepaid, by each request's exact cost) or by
        # invoices (postpaid); either way what is left is granted minus settled spend, never below zero.
        credit_remaining = max(0, row["credit_granted_micro_usd"] * PICO_PER_MICRO - int(row["spent_total_pico_usd"]))
        return Balance(
            tenant_id=row["tenant_id"], tenant_name=row["tenant_name"], billing_mode=row["billing_mode"],
            currency=self._currency, period_start=row["period_start"],
            period_spent_micro_usd=micro_usd(period_spent), period_spent_pico_usd=period_spent,
            monthly_spend_limit_micro_usd=row["monthly_spend_limit_micro_usd"],
            credit_granted_micro_usd=row["credit_granted_micro_usd"],
            credit_remaining_micro_usd=micro_usd(credit_remaining), credit_remaining_pico_usd=credit_remaining,
            reserved_micro_usd=row["reserved_micro_usd"], in_flight=row["in_flight"],
            max_concurrent_requests=row["max_concurrent_requests"],
        )

    async def set_limits(self, tenant_id: str, *, billing_mode: str | msgspec.UnsetType = _UNSET,
                         monthly_spend_limit_micro_usd: int | None | msgspec.UnsetType = _UNSET,
                         max_concurrent_requests: int | None | msgspec.UnsetType = _UNSET) -> Balance:
        if billing_mode is not _UNSET and billing_mode not in ("postpaid", "prepaid"):
            raise InvalidRequest("billing_mode must be 'postpaid' or 'prepaid'", param="billing_mode")
        if isinstance(monthly_spend_limit_micro_usd, int) and monthly_spend_limit_micro_usd < 0:
            raise InvalidRequest("monthly_spend_limit_micro_usd must be ≥ 0", param="monthly_spend_limit_micro_usd")
        if isinstance(max_concurrent_requests, int) and max_concurrent_requests < 1:
            raise InvalidRequest("max_concurrent_requests must be ≥ 1", param="max_concurrent_requests")
        updated = await self._db.fetchval(
            queries.update_account_limits, tenant_id,
            None if billing_mode is _UNSET else billing_mode,
            None if monthly_spend_limit_micro_usd is _UNSET else monthly_spend_limit_micro_usd,
            None if max_concurrent_requests is _UNSET else max_concurrent_requests,
            billing_mode is not _UNSET, monthly_spend_limit_micro_usd is not _UNSET, max_concurrent_requests is not _UNSET,
        )
        if updated is None:
            raise NotFound(f"no tenant {tenant_id!r}", param="tenant")
        return await self.balance(tenant_id)

    async def grant_credit(self, tenant_id: str, amount_micro_usd: int, reason: str = "") -> CreditGrant:
        if amount_micro_usd == 0:
            raise InvalidRequest("amount_micro_usd must not be 0", param="amount_micro_usd")
        await self.balance(tenant_id)  # 404 for an unknown tenant
        row = await self._db.fetchrow(queries.grant_credit, ids.credit_grant_id(), tenant_id, amount_micro_usd, reason)
        return CreditGrant(**dict(row))

    async def set_key_limits(self, key_id: str, *, requests_per_minute: int | None | msgspec.UnsetType = _UNSET,
                             tokens_per_minute: int | None | msgspec.UnsetType = _UNSET) -> KeyLimits:
        for name, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if isinstance(value, int) and not 1 <= value <= MAX_KEY_LIMIT:
                raise InvalidRequest(f"{name} must be 1 to {MAX_KEY_LIMIT} (or null for no limit)", param=name)
        row = await self._db.fetchrow(
            queries.update_key_limits, key_id,
            None if requests_per_minute is _UNSET else requests_per_minute,
            None if tokens_per_minute is _UNSET else tokens_per_minute,
            requests_per_minute is not _UNSET, tokens_per_minute is not _UNSET,
        )
        if row is None:
            raise NotFound(f"no API key {key_id!r}", param="key")
        return KeyLimits(**dict(row))
