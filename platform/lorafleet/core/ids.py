"""Typed, random, Stripe-style public ids (``ten_…``, ``key_…``, ``req_…``) that cannot be enumerated."""

from __future__ import annotations

import hashlib
import os
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 20
_ID_BYTES = 16  # 128 random bits for 20 base62 digits (119 bits): every digit is uniform to within 2^-9


def random_token(length: int) -> str:
    """``length`` base62 characters from the OS CSPRNG (5.95 bits each), exactly uniform (secrets)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _base62(value: int) -> str:
    digits = []
    for _ in range(_ID_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(_ALPHABET[digit])
    return "".join(digits)


def new_id(prefix: str, separator: str = "_") -> str:
    """A typed id: 20 base62 characters ≈ 119 bits, so ids cannot be guessed or collide.

    One ``os.urandom`` call and a base conversion: a request id is minted on every request, and
    twenty ``secrets.choice`` calls cost more than the rest of the id's work together.
    """
    return f"{prefix}{separator}{_base62(int.from_bytes(os.urandom(_ID_BYTES)))}"


def derived_id(prefix: str, *parts: object) -> str:
    """A typed id that is a function of ``parts`` (one of which is a random id, so it is not guessable
    either): the same work done twice gets the same id."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).digest()
    return f"{prefix}_{_base62(int.from_bytes(digest[:_ID_BYTES]))}"


def tenant_id() -> str:
    return new_id("ten")


def key_id() -> str:
    return new_id("key")


def request_id() -> str:
    return new_id("req")


def base_model_id() -> str:
    return new_id("bm")


def gateway_id() -> str:
    return new_id("gw")


def credit_grant_id() -> str:
    return new_id("cg")


def invoice_id() -> str:
    return new_id("in")


def invoice_line_id() -> str:
    return new_id("il")


def file_id() -> str:
    """OpenAI's spelling (``file-…``): SDKs and scripts written against OpenAI keep working."""
    return new_id("file", "-")


def fine_tuning_job_id() -> str:
    return new_id("ftjob", "-")


def fine_tuning_event_id() -> str:
    return new_id("ftevent", "-")


def fine_tuning_checkpoint_id() -> str:
    return new_id("ftckpt", "-")


def batch_id() -> str:
    return new_id("batch")


def batch_line_request_id(batch: str, line: int) -> str:
    """A batch line's request id: the ledger's key, the same however often the line runs."""
    return derived_id("req", "batch line", batch, line)


def batch_line_output_id(batch: str, line: int) -> str:
    return derived_id("batch_req", "batch output", batch, line)
