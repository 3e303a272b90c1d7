from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

MicroUsd = Annotated[int, Meta(ge=0, le=10**15)]


class PriceCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    base_model: Annotated[str, Meta(min_length=1, max_length=256)]
    prompt_micro_usd_per_mtok: MicroUsd
    completion_micro_usd_per_mtok: MicroUsd
    adapter_surcharge_micro_usd_per_mtok: MicroUsd = 0
    effective_at: dt.datetime | None = None


class AccountUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    billing_mode: Literal["postpaid", "prepaid"] | UnsetType = UNSET
    monthly_spend_limit_micro_usd: MicroUsd | None | UnsetType = UNSET   # null: no limit
    max_concurrent_requests: Annotated[int, Meta(ge=1, le=100_000)] | None | UnsetType = UNSET


class CreditCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    amount_micro_usd: Annotated[int, Meta(ge=-(10**15), le=10**15)]
    reason: Annotated[str, Meta(max_length=500)] = ""


class KeyLimitsUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    requests_per_minute: Annotated[int, Meta(ge=1, le=10**7)] | None | UnsetType = UNSET
    tokens_per_minute: Annotated[int, Meta(ge=1, le=10**10)] | None | UnsetType = UNSET
