from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from lorafleet.billing.accounts import MAX_KEY_LIMIT
from lorafleet.core.types import (
    BaseModelName,
    KeyName,
    MicroUsd,
    Reason,
    SignedMicroUsd,
    TenantName,
    Timestamp,
)
from lorafleet.tenancy.keys import Scope
from msgspec import UNSET, Meta, UnsetType


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class PriceCreate(_Strict, kw_only=True):
    base_model: BaseModelName
    prompt_micro_usd_per_mtok: MicroUsd
    completion_micro_usd_per_mtok: MicroUsd
    adapter_surcharge_micro_usd_per_mtok: MicroUsd = 0
    training_micro_usd_per_mtok: MicroUsd = 0  # per million trained tokens of a fine-tuning job
    cached_prompt_micro_usd_per_mtok: MicroUsd | None = None  # per million cached prompt tokens; null: the prompt price
    batch_discount_bps: Annotated[int, Meta(ge=0, le=10_000, description="A batch line's discount in basis points "
                                            "of its synchronous cost (5000: half price).")] = 5000
    effective_at: Timestamp | None = None


class AccountUpdate(_Strict, kw_only=True):
    billing_mode: Literal["postpaid", "prepaid"] | UnsetType = UNSET
    monthly_spend_limit_micro_usd: MicroUsd | None | UnsetType = UNSET   # null: no limit
    max_concurrent_requests: Annotated[int, Meta(ge=1, le=100_000)] | None | UnsetType = UNSET


class CreditCreate(_Strict, kw_only=True):
    amount_micro_usd: SignedMicroUsd
    reason: Reason = ""


class KeyLimitsUpdate(_Strict, kw_only=True):
    requests_per_minute: Annotated[int, Meta(ge=1, le=10**7)] | None | UnsetType = UNSET
    tokens_per_minute: Annotated[int, Meta(ge=1, le=MAX_KEY_LIMIT)] | None | UnsetType = UNSET


class TenantCreate(_Strict, kw_only=True):
    name: TenantName


class TenantKeyCreate(_Strict, kw_only=True):
    name: KeyName = ""
    scopes: Annotated[list[Scope], Meta(min_length=1, max_length=16)] | None = None  # None: all scopes
    mode: Literal["live", "test"] = "live"
    expires_at: Timestamp | None = None
