"""Bodies and views of ``/v1/webhook_endpoints``, in the official SDK's shapes."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

# What this platform emits (OpenAI's names). Others the SDK knows (responses, evals, realtime, …) answer
# 400 unsupported_parameter naming the type.
EVENT_TYPES: tuple[str, ...] = (
    "batch.completed", "batch.failed", "batch.expired", "batch.cancelled",
    "fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled",
)
MAX_ENDPOINTS = 20  # per tenant (409 beyond)

Url = Annotated[str, Meta(min_length=8, max_length=2048, description="The http(s) URL that receives deliveries.")]
Name = Annotated[str, Meta(min_length=1, max_length=128)]
EventTypes = Annotated[list[Annotated[str, Meta(max_length=64)]], Meta(min_length=1, max_length=32)]


class WebhookCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: Url
    name: Name
    event_types: EventTypes


class WebhookUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: Url | None = None
    name: Name | None = None
    event_types: EventTypes | None = None


class WebhookRotate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    keep_old_secret_active_for_24_hours: bool = False


class WebhookTest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    event_type: Annotated[str, Meta(min_length=1, max_length=64)]


class WebhookEndpoint(msgspec.Struct, kw_only=True):
    id: str
    name: str
    url: str
    event_types: list[str]
    created_at: int
    updated_at: int
    signing_secret_hint: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"


class WebhookEndpointWithSecret(WebhookEndpoint, kw_only=True):
    signing_secret: str  # only in the answers of create and rotate_secret


class WebhookEndpointPage(msgspec.Struct, kw_only=True):
    data: list[WebhookEndpoint]
    has_more: bool
    first_id: str | None
    last_id: str | None
    object: Literal["list"] = "list"


class DeletedWebhookEndpoint(msgspec.Struct, kw_only=True):
    id: str
    deleted: bool = True
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"


class WebhookTestResult(msgspec.Struct, kw_only=True):
    webhook_endpoint_id: str
    event_type: str
    status_code: int
    success: Literal[True] = True
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"


class WebhookDelivery(msgspec.Struct, kw_only=True):
    """Ours: one event's delivery to one endpoint (the webhook-id is ``event_id``)."""

    id: str
    event_id: str
    event_type: str
    webhook_endpoint_id: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: int | None
    delivered_at: int | None
    created_at: int
    object: Literal["webhook_endpoint.delivery"] = "webhook_endpoint.delivery"


class WebhookDeliveryPage(msgspec.Struct, kw_only=True):
    data: list[WebhookDelivery]
    has_more: bool
    object: Literal["list"] = "list"


class EventTypeList(msgspec.Struct, kw_only=True):
    data: list[str]
    object: Literal["list"] = "list"


