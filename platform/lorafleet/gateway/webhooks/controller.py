"""``/v1/webhook_endpoints`` (the official SDK's ``client.webhooks``) and ``/v1/webhook_event_types``; ours:
each endpoint's delivery log and replay."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody
from lorafleet.gateway.body import StrictBody
from lorafleet.gateway.dependencies import TENANT_DEPENDENCIES, TENANT_GUARDS, AppServices, Caller, scope
from lorafleet.gateway.error_specs import API_KEY, error_responses
from lorafleet.gateway.openapi import TENANT_SECURITY
from lorafleet.gateway.params import Limit, StartingAfter
from lorafleet.gateway.webhooks.schemas import (
    EVENT_TYPES,
    DeletedWebhookEndpoint,
    EventTypeList,
    WebhookCreate,
    WebhookDeliveryPage,
    WebhookEndpoint,
    WebhookEndpointPage,
    WebhookEndpointWithSecret,
    WebhookRotate,
    WebhookTest,
    WebhookTestResult,
    WebhookUpdate,
)


class WebhookEndpointsController(Controller):
    path = "/v1/webhook_endpoints"
    tags = ["Webhooks"]
    security = TENANT_SECURITY
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES

    @post("/", operation_id="createWebhookEndpoint", status_code=200, dto=StrictBody[WebhookCreate], return_dto=None,
          responses=error_responses(400, 409, 413, *API_KEY), opt=scope("webhooks:write", audit="webhook_endpoint.created"),
          summary="Create an endpoint; its signing secret is in this answer only.")
    async def create(self, data: JSONBody[WebhookCreate], services: AppServices, principal: Caller
                     ) -> WebhookEndpointWithSecret:
        return await services.webhooks.create(principal.tenant_id, data)

    @get("/", operation_id="listWebhookEndpoints", responses=error_responses(400, *API_KEY),
         opt=scope("webhooks:read"), summary="The tenant's endpoints, oldest first.")
    async def list_endpoints(self, services: AppServices, principal: Caller, limit: Limit = 20,
                             after: StartingAfter = None) -> WebhookEndpointPage:
        return await services.webhooks.list(principal.tenant_id, after, limit)

    @get("/{webhook_endpoint_id:str}", operation_id="getWebhookEndpoint", responses=error_responses(400, 404, *API_KEY),
         opt=scope("webhooks:read"), summary="One endpoint (its secret only as a hint).")
    async def retrieve(self, webhook_endpoint_id: FromPath[str], services: AppServices, principal: Caller
                       ) -> WebhookEndpoint:
        return await services.webhooks.get(principal.tenant_id, webhook_endpoint_id)

    @post("/{webhook_endpoint_id:str}", operation_id="updateWebhookEndpoint", status_code=200,
          dto=StrictBody[WebhookUpdate], return_dto=None, responses=error_responses(400, 404, 413, *API_KEY),
          opt=scope("webhooks:write", audit="webhook_endpoint.updated"),
          summary="Change an endpoint's name, URL or event types (the complete set).")
    async def update(self, webhook_endpoint_id: FromPath[str], data: JSONBody[WebhookUpdate], services: AppServices,
                     principal: Caller) -> WebhookEndpoint:
        return await services.webhooks.update(principal.tenant_id, webhook_endpoint_id, data)

    @delete("/{webhook_endpoint_id:str}", operation_id="deleteWebhookEndpoint", status_code=200,
            responses=error_responses(400, 404, *API_KEY), opt=scope("webhooks:write", audit="webhook_endpoint.deleted"),
            summary="Delete an endpoint: its pending deliveries stop.")
    async def remove(self, webhook_endpoint_id: FromPath[str], services: AppServices, principal: Caller
                     ) -> DeletedWebhookEndpoint:
        return await services.webhooks.delete(principal.tenant_id, webhook_endpoint_id)

    @post("/{webhook_endpoint_id:str}/rotate_secret", operation_id="rotateWebhookSecret", status_code=200,
          dto=StrictBody[WebhookRotate], return_dto=None, responses=error_responses(400, 404, 413, *API_KEY),
          opt=scope("webhooks:write", audit="webhook_endpoint.secret_rotated"),
          summary="A new signing secret (in this answer only); with keep_old_secret_active_for_24_hours, deliveries "
                  "are signed with both for 24 hours.")
    async def rotate_secret(self, webhook_endpoint_id: FromPath[str], services: AppServices, principal: Caller,
                            data: JSONBody[WebhookRotate] | None = None) -> WebhookEndpointWithSecret:
        keep = data.keep_old_secret_active_for_24_hours if data is not None else False
        return await services.webhooks.rotate(principal.tenant_id, webhook_endpoint_id, keep)

    @post("/{webhook_endpoint_id:str}/test", operation_id="testWebhookEndpoint", status_code=200,
          dto=StrictBody[WebhookTest], return_dto=None, responses=error_responses(400, 404, 413, *API_KEY),
          opt=scope("webhooks:write", audit="webhook_endpoint.tested"),
          summary="Send a signed sample event now and report the endpoint's status code (not retried).")
    async def test(self, webhook_endpoint_id: FromPath[str], data: JSONBody[WebhookTest], services: AppServices,
                   principal: Caller) -> WebhookTestResult:
        return await services.webhooks.test(principal.tenant_id, webhook_endpoint_id, data.event_type)

    @get("/{webhook_endpoint_id:str}/deliveries", operation_id="listWebhookDeliveries",
         responses=error_responses(400, 404, *API_KEY), opt=scope("webhooks:read"),
         summary="Ours: this endpoint's deliveries, newest first, with attempts and the last status code.")
    async def deliveries(self, webhook_endpoint_id: FromPath[str], services: AppServices, principal: Caller,
                         limit: Limit = 20, after: StartingAfter = None) -> WebhookDeliveryPage:
        return await services.webhooks.deliveries(principal.tenant_id, webhook_endpoint_id, after, limit)

    @post("/{webhook_endpoint_id:str}/deliveries/{delivery_id:str}/replay", operation_id="replayWebhookDelivery",
          status_code=202, responses=error_responses(400, 404, *API_KEY),
          opt=scope("webhooks:write", audit="webhook_delivery.replayed"),
          summary="Ours: send a delivery again now, with the same webhook-id (its event's id).")
    async def replay(self, webhook_endpoint_id: FromPath[str], delivery_id: FromPath[str], services: AppServices,
                     principal: Caller) -> dict[str, str]:
        await services.webhooks.replay(principal.tenant_id, webhook_endpoint_id, delivery_id)
        if services.webhook_deliverer is not None:
            services.webhook_deliverer.poke()
        return {"id": delivery_id, "status": "pending", "object": "webhook_endpoint.delivery"}


class WebhookEventTypesController(Controller):
    path = "/v1/webhook_event_types"
    tags = ["Webhooks"]
    security = TENANT_SECURITY
    guards = TENANT_GUARDS
    dependencies = TENANT_DEPENDENCIES

    @get("/", operation_id="listWebhookEventTypes", responses=error_responses(*API_KEY), opt=scope("webhooks:read"),
         summary="The event types this platform emits.")
    async def list_types(self, principal: Caller) -> EventTypeList:
        return EventTypeList(data=list(EVENT_TYPES))
