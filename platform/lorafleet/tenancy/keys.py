"""API key secrets: ``sk_live_<37 random base62><6 base62 checksum>``, stored only as a sha256 hash.

The checksum lets a gateway refuse a random or mistyped key without a database query (a flood of
made-up keys costs a CRC, not a lookup), and lets secret scanners tell a real key from noise:

- ``sk_(live|test)_`` followed by 43 characters ``[A-Za-z0-9]``;
- the last 6 are CRC-32 (ISO-HDLC, as ``zlib.crc32``) of everything before them — prefix
  included — written in base62 (alphabet ``0-9A-Za-z``), most significant digit first,
  left-padded with ``0``.

The 37 random characters carry ~220 bits. Keys minted before the checksum existed ("legacy")
still work; the authenticator only looks such keys up while any of them is still active.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from typing import Literal

from lorafleet.core.ids import random_token

RANDOM_LENGTH = 37
CHECKSUM_LENGTH = 6
SECRET_LENGTH = RANDOM_LENGTH + CHECKSUM_LENGTH
_SECRET_PATTERN = re.compile(rf"^sk_(live|test)_[A-Za-z0-9]{{{SECRET_LENGTH}}}$")
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

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
    "audit_logs:read",  # the organization's audit log (/v1/organization/audit_logs)
    "webhooks:read",    # /v1/webhook_endpoints and their delivery logs
    "webhooks:write",
    "organization:admin",  # the organization's projects (/v1/organization/projects): OpenAI's Admin API key
)
Scope = Literal[ALL_SCOPES]  # type: ignore[valid-type]


def checksum(body: str) -> str:
    """The 6-character base62 CRC-32 of ``body`` (the secret without its checksum)."""
    value = zlib.crc32(body.encode())
    digits = []
    for _ in range(CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits))


def generate_secret(mode: str = "live") -> str:
    body = f"sk_{mode}_{random_token(RANDOM_LENGTH)}"
    return body + checksum(body)


def parse_secret(secret: str) -> str | None:
    """The key's mode when ``secret`` has the shape of a key, else None (checksum not checked)."""
    match = _SECRET_PATTERN.match(secret)
    return match.group(1) if match else None


def has_valid_checksum(secret: str) -> bool:
    return checksum(secret[:-CHECKSUM_LENGTH]) == secret[-CHECKSUM_LENGTH:]


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def display_prefix(secret: str) -> str:
    # Enough to recognise a key in a list; far too little to use it.
    return secret[: len("sk_live_") + 4] + "…"
