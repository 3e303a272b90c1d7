"""Webhooks: endpoints (controller.py, service.py), Standard Webhooks signing, the delivery loop."""
