from lorafleet.gateway.billing.controller import BillingController

__all__ = ["BillingController"]
