"""localstripe, plus the one Stripe call it lacks that the exporter needs: a one-off invoice.

localstripe 1.15 creates invoices only for subscriptions (``POST /v1/invoices`` without one
answers 404 "No upcoming invoices"). Stripe creates a one-off invoice from the customer's pending
invoice items when asked with ``pending_invoice_items_behavior=include``; this shim does exactly
that with localstripe's own ``Invoice`` class (which already gathers pending items and keeps
metadata) and leaves every other route untouched. Run: ``python -m tests.localstripe_server --port N``.
"""

from __future__ import annotations

from localstripe import resources, server
from localstripe.errors import UserError

_subscription_create = resources.Invoice._api_create.__func__


def _create(cls, customer=None, subscription=None, description=None, metadata=None,
            pending_invoice_items_behavior=None, **kwargs):
    if subscription is None and pending_invoice_items_behavior == "include" and not kwargs:
        resources.Customer._api_retrieve(customer)  # 404 for an unknown customer, as Stripe
        invoice = cls(customer=customer, description=description, metadata=metadata)
        if not invoice.lines._list:
            raise UserError(400, "Nothing to invoice for customer")
        return invoice
    return _subscription_create(cls, customer=customer, subscription=subscription, description=description,
                                metadata=metadata, pending_invoice_items_behavior=pending_invoice_items_behavior,
                                **kwargs)


resources.Invoice._api_create = classmethod(_create)

if __name__ == "__main__":
    server.start()
