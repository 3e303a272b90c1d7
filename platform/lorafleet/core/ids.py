"""Typed, random, Stripe-style public ids (``ten_…``, ``key_…``, ``req_…``) that cannot be enumerated."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def random_token(length: int) -> str:
    """``length`` base62 characters from the OS CSPRNG (5.95 bits each)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_id(prefix: str) -> str:
    # 20 base62 characters ≈ 119 bits: collisions are not a concern and ids cannot be guessed.
    return f"{prefix}_{random_token(20)}"


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
