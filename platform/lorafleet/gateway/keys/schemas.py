from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec
from msgspec import Meta


class KeyCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(max_length=200)] = ""
    scopes: Annotated[list[str], Meta(min_length=1, max_length=16)] | None = None
    mode: Literal["live", "test"] = "live"
    expires_at: dt.datetime | None = None
