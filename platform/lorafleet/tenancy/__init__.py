"""Tenants and their API keys."""

from lorafleet.tenancy.keys import (
           ALL_SCOPES,
           generate_secret,
           has_valid_checksum,
           hash_secret,
           parse_secret,
)
from lorafleet.tenancy.service import KeyAuthority, TenancyService

__all__ = ["ALL_SCOPES", "KeyAuthority", "TenancyService", "generate_secret", "has_valid_checksum", "hash_secret",
           "parse_secret"]
