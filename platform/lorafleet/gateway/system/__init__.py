"""Health, readiness and Prometheus metrics."""

from lorafleet.gateway.system.controller import SystemController

__all__ = ["SystemController"]
