"""Tenant self-service adapters: ``/v1/adapters``."""

from lorafleet.gateway.adapters.controller import AdaptersController

__all__ = ["AdaptersController"]
