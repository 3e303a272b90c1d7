"""Webhook endpoints of a tenant: create (the secret shown once), list, read, update, delete, rotate the
secret, send a sample; their delivery log and replay. Another tenant's endpoint is a 404 like a missing one."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

import asyncpg
from lorafleet.core import ids
from lorafleet.core.errors import Conflict, InvalidRequest, NotFound
from lorafleet.db import queries
from lorafleet.gateway.webhooks import signing
from lorafleet.gateway.webhooks.delivery import WebhookSender, event_body
from lorafleet.gateway.webhooks.schemas import (
    EVENT_TYPES,
    MAX_ENDPOINTS,
    DeletedWebhookEndpoint,
    WebhookCreate,
    WebhookDelivery,
    WebhookDeliveryPage,
    WebhookEndpoint,
    WebhookEndpointPage,
    WebhookEndpointWithSecret,
    WebhookTestResult,
    WebhookUpdate,
)

OVERLAP_SECONDS = 24 * 3600  # a rotated-out secret keeps signing this long when asked to


def _seconds(value: dt.datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _view(row: asyncpg.Record) -> WebhookEndpoint:
    return WebhookEndpoint(id=row["id"], name=row["name"], url=row["url"], event_types=list(row["event_types"]),
                           created_at=int(row["created_at"].timestamp()), updated_at=int(row["updated_at"].timestamp()),
                           signing_secret_hint=signing.secret_hint(row["secret"]))


def _with_secret(row: asyncpg.Record) -> WebhookEndpointWithSecret:
    view = _view(row)
    return WebhookEndpointWithSecret(**{f: getattr(view, f) for f in view.__struct_fields__},
                                     signing_secret=row["secret"])


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidRequest("url must be an absolute http or https URL.", param="url", code="invalid_url")
    if parts.username or parts.password:
        raise InvalidRequest("url must not carry credentials; authenticate deliveries by their signature.",
                             param="url", code="invalid_url")
    return url


def _check_types(types: list[str], param: str = "event_types") -> list[str]:
    for event_type in types:
        if event_type not in EVENT_TYPES:
            raise InvalidRequest(f"event type {event_type!r} is not emitted by this platform; supported: "
                                 f"{', '.join(EVENT_TYPES)}.", param=param, code="unsupported_parameter")
    return sorted(set(types), key=types.index)


class WebhookEndpoints:
    def __init__(self, pool: asyncpg.Pool, sender: WebhookSender) -> None:
        self._pool = pool
        self._sender = sender

    async def create(self, tenant_id: str, data: WebhookCreate) -> WebhookEndpointWithSecret:
        url, types = _check_url(data.url), _check_types(data.event_types)
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext('webhooks:' || $1))", tenant_id)
            if await connection.fetchval(queries.count_webhook_endpoints, tenant_id) >= MAX_ENDPOINTS:
                raise Conflict(f"this account already has {MAX_ENDPOINTS} webhook endpoints, its limit; delete one.",
                               code="too_many_webhook_endpoints")
            row = await connection.fetchrow(queries.insert_webhook_endpoint, ids.new_id("we"), tenant_id,
                                            data.name, url, types, signing.new_secret())
        return _with_secret(row)

    async def _row(self, tenant_id: str, endpoint_id: str) -> asyncpg.Record:
        row = await self._pool.fetchrow(queries.get_webhook_endpoint, endpoint_id, tenant_id)
        if row is None:
            raise NotFound(f"No webhook endpoint {endpoint_id!r}.", param="webhook_endpoint_id")
        return row

    async def get(self, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
        return _view(await self._row(tenant_id, endpoint_id))

    async def list(self, tenant_id: str, after: str | None, limit: int) -> WebhookEndpointPage:
        if after is not None and await self._pool.fetchrow(queries.get_webhook_endpoint, after, tenant_id) is None:
            rows = []  # not one of this tenant's endpoints: no cursor at all
        else:
            rows = await self._pool.fetch(queries.list_webhook_endpoints, tenant_id, after, limit + 1)
        data = [_view(row) for row in rows[:limit]]
        return WebhookEndpointPage(data=data, has_more=len(rows) > limit, first_id=data[0].id if data else None,
                                   last_id=data[-1].id if data else None)

    async def update(self, tenant_id: str, endpoint_id: str, data: WebhookUpdate) -> WebhookEndpoint:
        url = _check_url(data.url) if data.url is not None else None
        types = _check_types(data.event_types) if data.event_types is not None else None
        row = await self._pool.fetchrow(queries.update_webhook_endpoint, endpoint_id, tenant_id, data.name, url, types)
        if row is None:
            raise NotFound(f"No webhook endpoint {endpoint_id!r}.", param="webhook_endpoint_id")
        return _view(row)

    async def delete(self, tenant_id: str, endpoint_id: str) -> DeletedWebhookEndpoint:
        if await self._pool.fetchval(queries.delete_webhook_endpoint, endpoint_id, tenant_id) is None:
            raise NotFound(f"No webhook endpoint {endpoint_id!r}.", param="webhook_endpoint_id")
        return DeletedWebhookEndpoint(id=endpoint_id)

    async def rotate(self, tenant_id: str, endpoint_id: str, keep_old: bool) -> WebhookEndpointWithSecret:
        row = await self._pool.fetchrow(queries.rotate_webhook_secret, endpoint_id, tenant_id, signing.new_secret(),
                                        float(OVERLAP_SECONDS) if keep_old else None)
        if row is None:
            raise NotFound(f"No webhook endpoint {endpoint_id!r}.", param="webhook_endpoint_id")
        return _with_secret(row)

    async def test(self, tenant_id: str, endpoint_id: str, event_type: str) -> WebhookTestResult:
        """A sample event of ``event_type`` sent now, signed like a real one (with a test id), not retried."""
        _check_types([event_type], "event_type")
        row = await self._row(tenant_id, endpoint_id)
        valid = [row["secret"]]
        if row["previous_secret"] and row["previous_secret_expires_at"] > dt.datetime.now(dt.UTC):
            valid.append(row["previous_secret"])
        sample_id = "batch_test" if event_type.startswith("batch.") else "ftjob-test"
        event_id = ids.new_id("evt_test")
        body = event_body(event_id, event_type, dt.datetime.now(dt.UTC), {"id": sample_id})
        status, error, _ = await self._sender.send(row["url"], valid, event_id, body)
        if status is None:
            raise InvalidRequest(f"The sample could not be delivered: {error}.", param="url",
                                 code="webhook_delivery_failed")
        return WebhookTestResult(webhook_endpoint_id=endpoint_id, event_type=event_type, status_code=status)

    async def deliveries(self, tenant_id: str, endpoint_id: str, after: str | None, limit: int
                         ) -> WebhookDeliveryPage:
        await self._row(tenant_id, endpoint_id)
        rows = await self._pool.fetch(queries.list_webhook_deliveries, tenant_id, endpoint_id, after, limit + 1)
        data = [WebhookDelivery(id=r["id"], event_id=r["event_id"], event_type=r["event_type"],
                                webhook_endpoint_id=r["endpoint_id"], status=r["status"], attempts=r["attempts"],
                                last_status_code=r["last_status_code"], last_error=r["last_error"],
                                next_attempt_at=_seconds(r["next_attempt_at"]) if r["status"] == "pending" else None,
                                delivered_at=_seconds(r["delivered_at"]), created_at=int(r["created_at"].timestamp()))
                for r in rows[:limit]]
        return WebhookDeliveryPage(data=data, has_more=len(rows) > limit)

    async def replay(self, tenant_id: str, endpoint_id: str, delivery_id: str) -> None:
        if await self._pool.fetchval(queries.replay_webhook_delivery, delivery_id, tenant_id, endpoint_id) is None:
            raise NotFound(f"No delivery {delivery_id!r} of webhook endpoint {endpoint_id!r}.", param="delivery_id")
