"""Tenants and their API keys."""

from lorafleet.tenancy.keys import ALL_SCOPES, generate_secret, hash_secret, parse_secret
from lorafleet.tenancy.service import TenancyService

__all__ = ["ALL_SCOPES", "TenancyService", "generate_secret", "hash_secret", "parse_secret"]
