"""Idempotency-Key on the POSTs that create or move something: a retry never does it twice."""

from __future__ import annotations

import uuid

import httpx

from tests.helpers import admin


async def test_a_retried_key_creation_returns_the_same_key_and_secret(platform, tenant, db):
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        first = await http.post("/v1/keys", json={"name": "ci", "scopes": ["inference"]}, headers=idem)
        again = await http.post("/v1/keys", json={"name": "ci", "scopes": ["inference"]}, headers=idem)
        other = await http.post("/v1/keys", json={"name": "other"}, headers=idem)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json(), "the first response, secret included"
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE tenant_id = $1 AND name = 'ci'", tenant.tenant_id) == 1
    stored = await db.fetchrow("SELECT response FROM idempotency_keys WHERE key = $1", idem["Idempotency-Key"])
    assert first.json()["secret"].encode() not in stored["response"], "the kept response is encrypted"


async def test_another_api_key_cannot_replay_someone_elses_result(platform, tenant, db):
    from lorafleet.tenancy import TenancyService

    colleague = await TenancyService(db).create_key(tenant.tenant_id)
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"name": "shared", "scopes": ["inference"]}
    async with httpx.AsyncClient(base_url=platform.url) as http:
        mine = await http.post("/v1/keys", json=body, headers={**idem, **tenant.headers})
        theirs = await http.post("/v1/keys", json=body, headers={**idem, "Authorization": f"Bearer {colleague.secret}"})
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["secret"] != theirs.json()["secret"], "keys are per caller: nobody reads another's secret"


async def test_a_failed_request_gives_its_key_back(platform, tenant):
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        refused = await http.post("/v1/keys", json={"expires_at": "2020-01-01T00:00:00Z"}, headers=idem)
        fixed = await http.post("/v1/keys", json={"expires_at": "2020-01-01T00:00:00Z"}, headers=idem)
    assert refused.status_code == fixed.status_code == 400, "an error is not kept: the same mistake is re-checked"


async def test_a_retried_credit_grant_grants_once(platform, tenant, db):
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    async with admin(platform, platform.env) as api:
        responses = [await api.post(f"/admin/tenants/{tenant.tenant_id}/credits", json={"amount_micro_usd": 5_000_000},
                                    headers=idem) for _ in range(3)]
        other = await api.post(f"/admin/tenants/{tenant.tenant_id}/credits", json={"amount_micro_usd": 6_000_000},
                               headers=idem)
    assert [r.status_code for r in responses] == [201, 201, 201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert other.status_code == 409
    granted = await db.fetchval("SELECT credit_granted_micro_usd FROM tenant_accounts WHERE tenant_id = $1",
                                tenant.tenant_id)
    assert granted == 5_000_000


async def test_a_retried_tenant_creation_creates_one_tenant(platform, db):
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    name = f"acme-{uuid.uuid4().hex[:8]}"
    async with admin(platform, platform.env) as api:
        first = await api.post("/admin/tenants", json={"name": name}, headers=idem)
        again = await api.post("/admin/tenants", json={"name": name}, headers=idem)
        key = await api.post(f"/admin/tenants/{first.json()['id']}/keys", json={"scopes": ["inference"]})
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert await db.fetchval("SELECT count(*) FROM tenants WHERE name = $1", name) == 1
    assert key.status_code == 201 and key.json()["secret"].startswith("sk_live_")
