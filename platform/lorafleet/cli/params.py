"""The CLI's argument types: each parses one kind of value or fails as a click usage error naming its option.

A bad value never reaches a service (or a traceback): click reports
``Invalid value for '--rpm': 'abc' is not a whole number.`` and exits 2.

Money on the command line: a whole number is micro-USD, as everywhere else (README › Money); a
dollar amount says so with ``$`` or ``usd`` (``'$1.50'``, ``1.5usd``, ``0.000001USD``) and is
converted exactly (``Decimal``, at most 6 decimals: nothing smaller than a micro-dollar exists). A
bare ``1.5`` is refused instead of guessed: 1.5 µUSD does not exist, and reading it as dollars
would make ``9000000`` and ``9000000.0`` differ by a factor of a million.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, localcontext
from typing import Any

import click

MICRO = 1_000_000
BIGINT_MAX = 2**63 - 1   # money columns are PostgreSQL bigint
INT4_MAX = 2**31 - 1     # counts and per-minute limits are PostgreSQL integer
_MAX_TEXT = 64
_PRECISION = _MAX_TEXT + 8  # significant digits: more than any accepted text holds

_WHOLE = re.compile(r"[+-]?\d+(?:_\d+)*")
_DOLLARS = re.compile(r"(?P<sign>[+-]?)(?:\$\s*(?P<sign2>[+-]?)(?P<a>[\d_.]+)|(?P<b>[\d_.]+)\s*usd)", re.IGNORECASE)
_DECIMAL = re.compile(r"\d+(?:_\d+)*(?:\.\d+)?|\.\d+")


class Cleared:
    """The value of a clearable option given as ``none``: remove the limit (an absent option is ``None``)."""

    def __repr__(self) -> str:
        return "CLEARED"


CLEARED = Cleared()


def parse_micro_usd(text: str) -> int:
    """``9000000`` → 9000000 (µUSD); ``$1.5`` / ``1.5usd`` → 1500000. Raises ``ValueError`` with the reason."""
    value = text.strip()
    if len(value) > _MAX_TEXT:
        raise ValueError(f"{text[:20]!r}… is too long for an amount")
    if _WHOLE.fullmatch(value):
        return int(value)
    dollars = _DOLLARS.fullmatch(value)
    if dollars:
        if dollars["sign"] and dollars["sign2"]:
            raise ValueError(f"{text!r} has two signs")
        digits = dollars["a"] if dollars["a"] is not None else dollars["b"]
        if not _DECIMAL.fullmatch(digits):
            raise ValueError(f"{text!r} is not a dollar amount (e.g. $1.50 or 1.5usd)")
        with localcontext(prec=_PRECISION):  # wide enough that nothing below rounds
            micro_exact = Decimal(digits.replace("_", "")).scaleb(6)
        if micro_exact != micro_exact.to_integral_value():
            raise ValueError(f"{text!r} has more than 6 decimals; the smallest amount is $0.000001 (1 µUSD)")
        micro = int(micro_exact)
        return -micro if "-" in (dollars["sign"] + (dollars["sign2"] or "")) else micro
    if _DECIMAL.fullmatch(value.lstrip("+-")):
        raise ValueError(f"{text!r} is not a whole number of micro-USD (1 USD = 1000000); "
                         f"for dollars write ${value} or {value}usd")
    raise ValueError(f"{text!r} is not an amount: micro-USD (e.g. 1500000) or dollars (e.g. $1.50 or 1.5usd)")


def format_micro_usd(micro: int | None) -> str:
    """1500000 → ``$1.500000``; exact (integer arithmetic, never a float)."""
    if micro is None:
        return "none"
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(micro), MICRO)
    return f"{sign}${whole:,}.{fraction:06d}"


class Money(click.ParamType):
    """An amount of money as integer micro-USD (see the module docstring for what it accepts)."""

    name = "µUSD|$DOLLARS"

    def __init__(self, *, signed: bool = False, nonzero: bool = False, maximum: int = BIGINT_MAX) -> None:
        self.signed = signed
        self.nonzero = nonzero
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            micro = value
        else:
            try:
                micro = parse_micro_usd(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if micro < 0 and not self.signed:
            self.fail(f"{value!r} is negative; amounts here are ≥ 0", param, ctx)
        if micro == 0 and self.nonzero:
            self.fail("the amount must not be 0", param, ctx)
        if abs(micro) > self.maximum:
            self.fail(f"{value!r} is more than the largest amount, {self.maximum} µUSD", param, ctx)
        return micro


class Count(click.IntRange):
    """A whole number within bounds (click's IntRange, named so its message reads "not a valid integer")."""

    name = "integer"


class Clearable(click.ParamType):
    """``none`` (any case) clears the setting; anything else is parsed by ``inner``."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = f"{inner.name}|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is CLEARED or (isinstance(value, str) and value.strip().lower() == "none"):
            return CLEARED
        return self.inner.convert(value, param, ctx)


class PublicId(click.ParamType):
    """A typed public id (``ten_…``, ``key_…``, ``adp_…``): the prefix is checked before any lookup."""

    _BODY = re.compile(r"[A-Za-z0-9]+")

    def __init__(self, prefix: str, what: str) -> None:
        self.prefix = prefix
        self.what = what
        self.name = f"{prefix}_…"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        head, separator, body = text.partition("_")
        if head != self.prefix or not separator or not self._BODY.fullmatch(body) or len(text) > 64:
            self.fail(f"{text!r} is not {self.what} id ({self.prefix}_…)", param, ctx)
        return text


class Month(click.ParamType):
    """A calendar month, ``YYYY-MM`` (UTC)."""

    name = "YYYY-MM"
    _PATTERN = re.compile(r"\d{4}-\d{2}")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        if self._PATTERN.fullmatch(text) and 1 <= int(text[5:]) <= 12 and int(text[:4]) >= 1:
            return text
        self.fail(f"{text!r} is not a month; write it like 2026-11", param, ctx)


class Timestamp(click.ParamType):
    """An ISO 8601 date or time (``2027-01-01``, ``2027-01-01T12:00:00Z``); without a zone it is UTC."""

    name = "ISO-8601"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.datetime:
        if isinstance(value, dt.datetime):
            moment = value
        else:
            try:
                moment = dt.datetime.fromisoformat(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not an ISO 8601 time (e.g. 2027-01-01 or 2027-01-01T12:00:00Z)", param, ctx)
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


# Instances the commands share.
TENANT_ID = PublicId("ten", "a tenant")
KEY_ID = PublicId("key", "an API key")
ADAPTER_ID = PublicId("adp", "an adapter")
PRICE = Money()                                   # per million tokens, ≥ 0
SPEND_LIMIT = Clearable(Money())                  # µUSD per month, or none
CREDIT = Money(signed=True, nonzero=True)         # a negative grant takes credits back
PER_MINUTE = Clearable(Count(1, INT4_MAX))
CONCURRENCY = Clearable(Count(1, INT4_MAX))
MONTH = Month()
TIMESTAMP = Timestamp()
