"""Tenant self-service API keys: ``/v1/keys``."""

from lorafleet.gateway.keys.controller import KeysController

__all__ = ["KeysController"]
