"""A key never mints a key more powerful or longer-lived than itself — through the API or the dashboard.

The dashboard acts with exactly the scopes of the key that signed in: every page and form checks
them, and a key created there is bounded like one created with POST /v1/keys.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

pytestmark = pytest.mark.engine


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_a_child_key_inherits_expiry_and_records_its_parent(gateway, db, make_key):
    parent = await make_key()
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    await db.execute("UPDATE api_keys SET expires_at = $2 WHERE id = $1", parent.key_id, expires)
    await db.execute("SELECT pg_sleep(0.6)")  # past the gateway's key cache
    async with httpx.AsyncClient(base_url=gateway.url, headers=_auth(parent.secret)) as http:
        child = await http.post("/v1/keys", json={"name": "child"})
        assert child.status_code == 201, child.text
        body = child.json()
        assert dt.datetime.fromisoformat(body["expires_at"]) == expires, "a key expiring in an hour mints one that does too"
        assert body["parent_key_id"] == parent.key_id
        later = await http.post("/v1/keys", json={"expires_at": (expires + dt.timedelta(days=1)).isoformat()})
        assert later.status_code == 400 and later.json()["error"]["param"] == "expires_at"
        sooner = await http.post("/v1/keys", json={"expires_at": (expires - dt.timedelta(minutes=5)).isoformat()})
        assert sooner.status_code == 201
    stored = await db.fetchrow("SELECT parent_key_id, expires_at FROM api_keys WHERE id = $1", body["id"])
    assert stored["parent_key_id"] == parent.key_id and stored["expires_at"] == expires


async def test_a_narrow_keys_write_key_cannot_revoke_a_broader_key(gateway, make_key):
    owner = await make_key()
    narrow = await make_key(scopes=["keys:read", "keys:write"], tenant_id=owner.tenant_id)
    async with httpx.AsyncClient(base_url=gateway.url, headers=_auth(narrow.secret)) as http:
        refused = await http.delete(f"/v1/keys/{owner.key_id}")
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
        sibling = (await http.post("/v1/keys", json={"scopes": ["keys:read"]})).json()
        assert (await http.delete(f"/v1/keys/{sibling['id']}")).status_code == 200
    async with httpx.AsyncClient(base_url=gateway.url, headers=_auth(owner.secret)) as http:
        assert (await http.get("/v1/models")).status_code == 200, "the broader key still works"


@asynccontextmanager
async def _dashboard(gateway, secret: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, follow_redirects=False) as http:
        form = await http.get("/dashboard/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        signed = await http.post("/dashboard/login", data={"api_key": secret, "csrf": csrf})
        assert signed.status_code == 303, signed.text[:300]
        yield http


async def _session_csrf(http: httpx.AsyncClient) -> str:
    page = await http.get("/dashboard")
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


async def test_a_dashboard_only_key_signs_in_and_can_do_nothing_else(gateway, db, make_key):
    owner = await make_key()
    viewer = await make_key(scopes=["dashboard"], tenant_id=owner.tenant_id)
    keys_before = await db.fetchval("SELECT count(*) FROM api_keys WHERE tenant_id = $1", owner.tenant_id)
    async with _dashboard(gateway, viewer.secret) as http:
        csrf = await _session_csrf(http)
        overview = await http.get("/dashboard")
        assert overview.status_code == 200 and 'href="/dashboard/keys"' not in overview.text
        for path in ("/dashboard/usage", "/dashboard/keys", "/dashboard/adapters", "/dashboard/invoices",
                     "/dashboard/usage?format=csv"):
            assert (await http.get(path)).status_code == 403, path
        # The attack from the issue: no box ticked used to mint a key with every scope.
        minted = await http.post("/dashboard/keys", data={"csrf": csrf, "name": "escalate"})
        assert minted.status_code == 403
        assert (await http.post(f"/dashboard/keys/{owner.key_id}/revoke", data={"csrf": csrf})).status_code == 403
        upload = await http.post("/dashboard/adapters/upload", headers={"x-csrf-token": csrf},
                                 files={"file": ("adapter_config.json", b"{}")}, data={"name": "x"})
        assert upload.status_code == 403
        assert (await http.post("/dashboard/adapters/adp_x/delete", data={"csrf": csrf})).status_code == 403
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE tenant_id = $1", owner.tenant_id) == keys_before
    assert await db.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", owner.key_id) is None


async def test_a_key_made_in_the_dashboard_stays_within_the_signing_keys_bounds(gateway, db, make_key):
    owner = await make_key()
    manager = await make_key(scopes=["dashboard", "keys:read", "keys:write"], tenant_id=owner.tenant_id)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    await db.execute("UPDATE api_keys SET expires_at = $2 WHERE id = $1", manager.key_id, expires)
    async with _dashboard(gateway, manager.secret) as http:
        csrf = await _session_csrf(http)
        created = await http.post("/dashboard/keys", data={"csrf": csrf, "name": "made-here"})
        assert created.status_code == 303
        wider = await http.post("/dashboard/keys", data={"csrf": csrf, "name": "wider", "scope_inference": "1"})
        assert wider.status_code == 400
        refused = await http.post(f"/dashboard/keys/{owner.key_id}/revoke", data={"csrf": csrf})
        assert refused.status_code == 403
    rows = await db.fetch("SELECT name, scopes, expires_at, parent_key_id FROM api_keys WHERE tenant_id = $1 "
                          "AND name IN ('made-here', 'wider')", owner.tenant_id)
    assert len(rows) == 1
    made = rows[0]
    assert sorted(made["scopes"]) == ["dashboard", "keys:read", "keys:write"]
    assert made["expires_at"] == expires and made["parent_key_id"] == manager.key_id


async def test_failed_sign_ins_from_one_address_are_throttled(gateway, make_key):
    from lorafleet.tenancy.keys import generate_secret

    good = await make_key()
    attacker = {"X-Forwarded-For": "203.0.113.77"}  # the gateway trusts forwarding headers from loopback only
    async with httpx.AsyncClient(base_url=gateway.url, headers=attacker) as http:
        statuses = [(await http.get("/v1/models", headers=_auth(generate_secret()))).status_code for _ in range(80)]
        assert statuses[0] == 401 and statuses[-1] == 429
        limited = await http.get("/v1/models", headers=_auth(generate_secret()))
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error"]["code"] == "too_many_failed_attempts"
    async with httpx.AsyncClient(base_url=gateway.url, headers={"X-Forwarded-For": "198.51.100.12"}) as other:
        assert (await other.get("/v1/models", headers=_auth(generate_secret()))).status_code == 401
        assert (await other.get("/v1/models", headers=_auth(good.secret))).status_code == 200
