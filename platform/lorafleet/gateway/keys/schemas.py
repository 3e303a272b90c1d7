from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from lorafleet.core.types import KeyName, Timestamp
from lorafleet.tenancy.keys import Scope
from msgspec import Meta


class KeyCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: KeyName = ""
    scopes: Annotated[list[Scope], Meta(min_length=1, max_length=16)] | None = None  # None: the creating key's
    mode: Literal["live", "test"] = "live"
    expires_at: Timestamp | None = None  # None: the creating key's expiry (never later than it)
