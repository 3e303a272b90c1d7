"""Reading the audit log: pages in the shape of OpenAI's ``admin.organization.audit_logs.list``."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncpg
import msgspec
from lorafleet.db import queries


class AuditLogPage(msgspec.Struct, kw_only=True):
    """OpenAI's cursor page (``SyncConversationCursorPage``): the SDK follows ``last_id`` while ``has_more``."""

    data: list[dict[str, Any]]
    has_more: bool
    first_id: str | None
    last_id: str | None
    object: str = "list"


def event_view(row: asyncpg.Record) -> dict[str, Any]:
    """One row as OpenAI's audit log object; ``actor.type`` adds ``operator`` and ``anonymous`` to its two kinds,
    and ``request_id``, ``user_agent``, ``ip_address``, ``status`` and ``tenant_id`` are ours."""
    kind = row["actor_kind"]
    actor: dict[str, Any] = {"type": kind}
    if kind == "api_key":
        actor["api_key"] = {"id": row["actor_id"], "type": "user"}
    elif kind == "session":
        actor["session"] = {"id": row["actor_id"], "ip_address": row["ip_address"], "api_key_id": row["actor_key_id"]}
    elif kind == "operator":
        actor["operator"] = {"id": row["actor_id"]}
    details = row["details"] or {}
    return {
        "object": "organization.audit_log",
        "id": row["id"],
        "type": row["type"],
        "effective_at": int(row["effective_at"].timestamp()),
        "actor": actor,
        row["type"]: {"id": row["resource_id"], "data": details.get("fields", {}),
                      **({"path": details["path"]} if "path" in details else {})},
        "tenant_id": row["tenant_id"],
        "request_id": row["request_id"],
        "ip_address": row["ip_address"],
        "user_agent": row["user_agent"],
        "status": row["status"],
    }


async def list_events(pool: asyncpg.Pool, *, tenant_id: str | None, after: str | None, before: str | None,
                      event_types: list[str] | None, actor_ids: list[str] | None, resource_ids: list[str] | None,
                      since: dt.datetime | None, until: dt.datetime | None, limit: int) -> AuditLogPage:
    """A page, newest first; a cursor that is not one of this tenant's events gives an empty page, like OpenAI's."""
    rows = await pool.fetch(queries.list_audit_events, tenant_id, after, before, event_types, actor_ids,
                            resource_ids, since, until, limit + 1)
    more = len(rows) > limit
    for cursor in (after, before):
        if cursor is not None and not await pool.fetchval(queries.audit_event_exists, cursor, tenant_id):
            rows, more = [], False
    rows = rows[:limit] if before is None else rows[:limit][::-1]
    data = [event_view(row) for row in rows]
    return AuditLogPage(data=data, has_more=more, first_id=data[0]["id"] if data else None,
                        last_id=data[-1]["id"] if data else None)
