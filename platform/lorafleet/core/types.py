"""Constrained types shared by the API, the CLI and the dashboard: one definition of each rule.

msgspec enforces them when a request body is decoded, and Litestar turns the same ``Meta`` into
the OpenAPI schema, so a generated client sees the rule the server applies.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Generic, Literal, TypeVar

import msgspec
from msgspec import Meta

ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ADAPTER_NAME_RULE = "1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"

AdapterName = Annotated[str, Meta(pattern=ADAPTER_NAME_PATTERN, description=ADAPTER_NAME_RULE)]
KeyName = Annotated[str, Meta(max_length=200, description="A label for the key (up to 200 characters).")]
TenantName = Annotated[str, Meta(min_length=1, max_length=200)]
ModelName = Annotated[str, Meta(min_length=1, max_length=256, description="A base model, or one of your adapters as "
                                                                         "`name` or `base:name`.")]
BaseModelName = Annotated[str, Meta(min_length=1, max_length=256)]
MicroUsd = Annotated[int, Meta(ge=0, le=10**15, description="An amount in micro-USD (1 USD = 1,000,000).")]
SignedMicroUsd = Annotated[int, Meta(ge=-(10**15), le=10**15, description="An amount in micro-USD; negative takes back.")]
# A time with an explicit offset: "2027-01-01T00:00:00Z". A naive time is refused, not guessed.
Timestamp = Annotated[dt.datetime, Meta(tz=True, description="RFC 3339 time with a timezone, e.g. 2027-01-01T00:00:00Z")]
Reason = Annotated[str, Meta(max_length=500)]
Cursor = Annotated[str, Meta(min_length=1, max_length=64, description="The id of the last object of the previous page.")]
PageSize = Annotated[int, Meta(ge=1, le=100)]

T = TypeVar("T")


class Page(msgspec.Struct, Generic[T], kw_only=True):
    """Stripe-style list: ``has_more`` says whether ``starting_after`` = the last id gives more."""

    data: list[T]
    has_more: bool
    object: Literal["list"] = "list"


def page_of(rows: list[T], limit: int) -> Page[T]:
    """A page from ``limit + 1`` fetched rows: the extra row only says that there are more."""
    return Page(data=rows[:limit], has_more=len(rows) > limit)


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(msgspec.Struct, kw_only=True):
    """The body of every error answer: OpenAI's envelope (core/errors.py renders it)."""

    error: ErrorDetail
