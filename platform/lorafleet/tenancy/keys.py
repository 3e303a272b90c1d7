"""API key secrets: ``sk_live_<43 base62 chars>`` (~256 bits), stored only as a sha256 hash."""

from __future__ import annotations

import hashlib
import re

from lorafleet.core.ids import random_token

SECRET_LENGTH = 43
_SECRET_PATTERN = re.compile(rf"^sk_(live|test)_[A-Za-z0-9]{{{SECRET_LENGTH}}}$")

# What a key may do. A key carries a subset; new keys get all of them unless told otherwise.
ALL_SCOPES: tuple[str, ...] = (
    "inference",        # /v1/chat/completions, /v1/completions, /v1/models
    "keys:read",
    "keys:write",
    "adapters:read",
    "adapters:write",
    "usage:read",
    "billing:read",
    "dashboard",
)


def generate_secret(mode: str = "live") -> str:
    return f"sk_{mode}_{random_token(SECRET_LENGTH)}"


def parse_secret(secret: str) -> str | None:
    """The key's mode when ``secret`` is well formed, else None."""
    match = _SECRET_PATTERN.match(secret)
    return match.group(1) if match else None


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def display_prefix(secret: str) -> str:
    # Enough to recognise a key in a list; far too little to use it.
    return secret[: len("sk_live_") + 4] + "…"
