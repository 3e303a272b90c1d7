"""Writing one audit event: the gateway's audit layer (gateway/audit/recorder.py) and the operator's CLI
commands that change the database directly (cli/) both come here, so a row has one shape whoever writes it.

Never a secret: callers pass field values through :func:`scrub`, which drops secret-like field names
(a key's or a webhook's secret, tokens, passwords), redacts URLs down to their host and bounds size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lorafleet.core.ids import new_id
from lorafleet.core.ids import request_id as new_request_id
from lorafleet.core.logging import redact_url
from lorafleet.db import queries

MAX_STRING = 200   # a recorded string is cut here
_SECRET_FIELD = re.compile(r"secret|token|password|api_key|authorization|credential|signature|csrf", re.IGNORECASE)


def scrub(value: Any, depth: int = 0) -> Any:
    """``value`` without secret-like fields, long strings cut, URLs cut to their host, nesting bounded."""
    if isinstance(value, dict):
        if depth >= 3:
            return "[nested]"
        return {k.replace("\x00", "")[:MAX_STRING]: scrub(v, depth + 1) for k, v in value.items()
                if isinstance(k, str) and not _SECRET_FIELD.search(k)}
    if isinstance(value, (list, tuple)):
        return [scrub(v, depth + 1) for v in list(value)[:20]]
    if isinstance(value, str):
        if "://" in value:  # a URL's path or query may be a credential (a Slack webhook's is)
            scheme, _, rest = value.partition("://")
            host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
            value = f"{scheme}://{host}/…" if "/" in rest else redact_url(f"{scheme}://{host}")
        return value.replace("\x00", "")[:MAX_STRING]  # jsonb cannot hold NUL: the row must still be written
    return value


@dataclass(frozen=True, slots=True)
class Actor:
    kind: str                     # api_key, session, operator, anonymous
    id: str | None
    key_id: str | None = None     # the key a dashboard session signed in with
    ip_address: str | None = None
    user_agent: str | None = None


async def record_event(db: Any, *, event: str, actor: Actor, tenant_id: str | None, resource_id: str | None,
                       fields: Any = None, extra: dict[str, Any] | None = None, request_id: str | None = None,
                       status: int = 200, key_id: str | None = None, adapter_id: str | None = None) -> str | None:
    """Insert one event (on ``db``: a pool, or a connection inside the change's own transaction). The tenant,
    when not given, is the one owning ``key_id`` or ``adapter_id``. Returns the event's tenant."""
    details = {"fields": scrub(fields) if isinstance(fields, dict) else {}, **(extra or {})}
    user_agent = actor.user_agent[:MAX_STRING] if actor.user_agent else None
    return await db.fetchval(
        queries.insert_audit_event, new_id("audit_log", "-"), tenant_id, event, actor.kind, actor.id, actor.key_id,
        resource_id, details, actor.ip_address, user_agent, request_id or new_request_id(), status, key_id, adapter_id)
