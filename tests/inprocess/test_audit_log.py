"""The audit log read back through the official SDK (``client.admin.organization.audit_logs.list``), its
filters and cursor, the operator's view, the database's refusal to change a row, and what a row never holds.

Which routes write which rows (one per change, with its actor) is the route matrix's walk:
tests/inprocess/test_bola.py::test_every_change_leaves_exactly_one_audit_row_with_its_actor.
"""

from __future__ import annotations

import datetime as dt

import asyncpg
import httpx
import openai
import pytest
from lorafleet.tenancy import TenancyService
from lorafleet.tenancy.audit import scrub

from tests.helpers import TenantKey


def _admin_sdk(url: str, key: TenantKey) -> openai.AsyncOpenAI:
    # A tenant is an OpenAI organization: its audit_logs:read key plays the Admin API key.
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", admin_api_key=key.secret, max_retries=0)


async def _changes(url: str, key: TenantKey, count: int) -> list[str]:
    """``count`` keys made then revoked through the API: 2 × count events; the made keys' ids."""
    made = []
    async with httpx.AsyncClient(base_url=url, headers=key.headers, timeout=30) as http:
        for n in range(count):
            created = await http.post("/v1/keys", json={"name": f"k{n}", "scopes": ["inference"]},
                                      headers={"User-Agent": "audit-test/1"})
            assert created.status_code == 201, created.text
            revoked = await http.delete(f"/v1/keys/{created.json()['id']}")
            assert revoked.status_code == 200, revoked.text
            made.append(created.json()["id"])
    return made


async def test_the_sdk_lists_the_organizations_events_with_filters_and_cursor(platform, tenant, other_tenant):
    made = await _changes(platform.url, tenant, 3)
    theirs = await _changes(platform.url, other_tenant, 1)
    sdk = _admin_sdk(platform.url, tenant)
    events = [event async for event in sdk.admin.organization.audit_logs.list(limit=2)]  # follows the cursor
    assert [e.type for e in events] == ["api_key.deleted", "api_key.created"] * 3
    ids_seen = [getattr(e, e.type.replace(".", "_")).id for e in events]
    assert ids_seen == [key for key in reversed(made) for _ in (0, 1)]
    assert theirs[0] not in str([e.model_dump() for e in events])  # never another organization's
    first = events[-1]
    assert first.actor.type == "api_key" and first.actor.api_key.id == tenant.key_id
    assert first.effective_at <= int(dt.datetime.now(dt.UTC).timestamp()) + 1
    extra = first.model_extra or {}
    assert extra["request_id"].startswith("req_") and extra["user_agent"] == "audit-test/1"
    assert extra["ip_address"] == "127.0.0.1"
    created_data = first.api_key_created.data  # OpenAI's APIKeyCreatedData: the scopes (and, ours, the name)
    assert created_data.scopes == ["inference"] and created_data.model_extra == {"name": "k0"}

    created = [e async for e in sdk.admin.organization.audit_logs.list(event_types=["api_key.created"])]
    assert [e.api_key_created.id for e in created] == list(reversed(made))
    one = await sdk.admin.organization.audit_logs.list(resource_ids=[made[1]])
    assert {e.type for e in one.data} == {"api_key.created", "api_key.deleted"} and not one.has_more
    by_me = await sdk.admin.organization.audit_logs.list(actor_ids=[tenant.key_id], limit=100)
    assert len(by_me.data) == 6
    by_other = await sdk.admin.organization.audit_logs.list(actor_ids=[other_tenant.key_id])
    assert by_other.data == []
    future = int(dt.datetime.now(dt.UTC).timestamp()) + 3600
    assert (await sdk.admin.organization.audit_logs.list(effective_at={"gte": future})).data == []
    assert len((await sdk.admin.organization.audit_logs.list(effective_at={"lt": future}, limit=100)).data) == 6
    page = await sdk.admin.organization.audit_logs.list(limit=2)
    older = await sdk.admin.organization.audit_logs.list(after=page.last_id, limit=2)
    newer = await sdk.admin.organization.audit_logs.list(before=older.data[0].id, limit=2)
    assert [e.id for e in newer.data] == [e.id for e in page.data]
    # Another organization's event as a cursor is no cursor at all: an empty page, as for one that never existed.
    their_event = (await _admin_sdk(platform.url, other_tenant).admin.organization.audit_logs.list()).data[0].id
    assert (await sdk.admin.organization.audit_logs.list(after=their_event)).data == []


async def test_bad_filters_and_keys_without_the_scope_are_refused(platform, tenant, db):
    sdk = _admin_sdk(platform.url, tenant)
    for kwargs, param in (({"project_ids": ["proj_x"]}, "project_ids"), ({"actor_emails": ["a@b.c"]}, "actor_emails"),
                          ({"tenant_only": True}, "tenant_only")):
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.admin.organization.audit_logs.list(**kwargs)
        assert refused.value.body["param"] == param and refused.value.body["code"] == "unsupported_parameter"
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        for params, param in (({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"after": "x" * 65}, "after"),
                              ({"effective_at[gte]": "soon"}, "effective_at[gte]"),
                              ({"event_types": "x" * 129}, "event_types")):
            answer = await http.get("/v1/organization/audit_logs", params=params)
            assert answer.status_code == 400, (params, answer.text)
            assert answer.json()["error"]["param"] == param, (params, answer.text)
    plain = await TenancyService(db).create_key(tenant.tenant_id, scopes=["keys:read", "keys:write"])
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await _admin_sdk(platform.url, TenantKey(tenant.tenant_id, plain.id, plain.secret)
                         ).admin.organization.audit_logs.list()
    assert "audit_logs:read" in denied.value.body["message"]


async def test_the_operator_reads_every_tenants_events(platform, tenant, other_tenant):
    mine, theirs = await _changes(platform.url, tenant, 1), await _changes(platform.url, other_tenant, 1)
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.admin_headers, timeout=30) as http:
        everything = (await http.get("/admin/audit_logs", params={"limit": 100})).json()["data"]
        narrowed = (await http.get("/admin/audit_logs", params={"tenant_id": other_tenant.tenant_id})).json()["data"]
    resources = {e[e["type"]]["id"] for e in everything}
    assert {mine[0], theirs[0]} <= resources
    assert {e["tenant_id"] for e in narrowed} == {other_tenant.tenant_id} and len(narrowed) == 2


async def test_the_database_refuses_to_change_or_remove_an_event(platform, tenant, db):
    await _changes(platform.url, tenant, 1)
    event_id = await db.fetchval("SELECT id FROM audit_log WHERE tenant_id = $1 ORDER BY seq LIMIT 1", tenant.tenant_id)
    for statement in ("UPDATE audit_log SET type = 'nothing.happened' WHERE id = $1",
                      "DELETE FROM audit_log WHERE id = $1"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await db.execute(statement, event_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("TRUNCATE audit_log")
    assert await db.fetchval("SELECT type FROM audit_log WHERE id = $1", event_id) == "api_key.created"


def test_a_recorded_body_drops_secrets_and_cuts_urls_to_their_host():
    body = {"name": "n", "secret": "whsec_x", "nested": {"api_key": "sk_live_x", "client_secret": "y", "ok": 1},
            "url": "https://hooks.example.com/services/T0/B0/abcdef?token=1", "Authorization": "Bearer x",
            "long": "x" * 1000, "items": list(range(50))}
    assert scrub(body) == {"name": "n", "nested": {"ok": 1}, "url": "https://hooks.example.com/…",
                           "long": "x" * 200, "items": list(range(20))}
