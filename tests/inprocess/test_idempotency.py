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
        fixed = await http.post("/v1/keys", json={"name": "fixed", "scopes": ["inference"]}, headers=idem)
        again = await http.post("/v1/keys", json={"name": "fixed", "scopes": ["inference"]}, headers=idem)
    assert refused.status_code == 400, refused.text
    # An error is not kept: the key is free again, so the corrected request runs (not the 400 replayed,
    # nor a 409 for a different body), and from then on the key replays the success.
    assert fixed.status_code == 201, fixed.text
    assert again.status_code == 201 and again.json()["id"] == fixed.json()["id"]


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


# ---- every route that accepts the header (issue 21, finding 7) ------------------------------------

def _multipart(boundary: str, fields: dict[str, str], files: list[tuple[str, bytes]]) -> bytes:
    out = b""
    for name, value in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").encode()
    for filename, content in files:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


async def test_an_adapter_upload_retried_with_another_multipart_boundary_is_replayed(platform, tenant, db, tmp_path):
    import msgspec
    from lorafleet.core import ids
    from lorafleet.db import queries

    from tests.adapter_factory import TINY, lora_config, write_adapter

    base = f"idem-tiny-{uuid.uuid4().hex[:6]}"
    await db.execute(queries.upsert_base_model, ids.base_model_id(), base, 2048, msgspec.to_builtins(TINY), 16,
                     "generate")
    folder = write_adapter(tmp_path / "adapter", config=lora_config(8, ["q_proj", "v_proj"], base=base))
    files = [(path.name, path.read_bytes()) for path in sorted(folder.iterdir())]
    idem = {"Idempotency-Key": str(uuid.uuid4())}

    async def upload(boundary: str, name: str = "idem-adapter", content: list[tuple[str, bytes]] = files):
        return await http.post("/v1/adapters", content=_multipart(boundary, {"name": name, "base_model": base}, content),
                               headers={**idem, "Content-Type": f"multipart/form-data; boundary={boundary}"})

    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=60) as http:
        first = await upload("boundary-" + uuid.uuid4().hex)
        again = await upload("another-" + uuid.uuid4().hex)
        renamed = await upload("third-" + uuid.uuid4().hex, name="idem-other")
        changed = await upload("fourth-" + uuid.uuid4().hex, content=[files[0], (files[1][0], files[1][1][:-4] + b"\0\0\0\0")])
    assert first.status_code == again.status_code == 201, (first.text, again.text)
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    for other in (renamed, changed):
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused", other.text
    assert await db.fetchval("SELECT count(*) FROM adapters WHERE tenant_id = $1", tenant.tenant_id) == 1


async def test_a_retried_response_is_replayed_not_run_or_billed_twice(platform, tenant, db):
    from tests.helpers import wait_rows
    from tests.inprocess.conftest import STUB_MODEL

    idem = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"model": STUB_MODEL, "input": "Hello", "max_output_tokens": 8}
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        first = await http.post("/v1/responses", json=body, headers=idem)
        again = await http.post("/v1/responses", json=body, headers=idem)
        other = await http.post("/v1/responses", json={**body, "input": "Bye"}, headers=idem)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["x-lorafleet-cost-micro-usd"] == first.headers["x-lorafleet-cost-micro-usd"]
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert sum(len(worker.behaviour.received) for worker in platform.workers) == 1
    await wait_rows(db, tenant.tenant_id, 1)
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id) == 1
    stored = await db.fetchval("SELECT response FROM idempotency_keys WHERE key = $1", idem["Idempotency-Key"])
    assert b"ok ok" not in stored, "the kept answer is encrypted"


async def test_concurrent_duplicates_of_a_response_run_once(platform, tenant, db):
    import asyncio

    from tests.inprocess.conftest import STUB_MODEL

    for worker in platform.workers:
        worker.behaviour.delay_seconds = 0.5  # the first is still running when the second arrives
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"model": STUB_MODEL, "input": "Hello"}
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        answers = await asyncio.gather(*(http.post("/v1/responses", json=body, headers=idem) for _ in range(2)))
        later = await http.post("/v1/responses", json=body, headers=idem)
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200, 409], [answer.text for answer in answers]
    busy = next(answer for answer in answers if answer.status_code == 409)
    assert busy.json()["error"]["code"] == "idempotency_key_in_use"
    ran = next(answer for answer in answers if answer.status_code == 200)
    assert later.status_code == 200 and later.json()["id"] == ran.json()["id"]
    assert sum(len(worker.behaviour.received) for worker in platform.workers) == 1


async def test_a_retried_streamed_response_is_replayed_as_its_events(platform, tenant):
    import json

    from tests.inprocess.conftest import STUB_MODEL

    idem = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"model": STUB_MODEL, "input": "Hello", "stream": True}

    def events(text: str) -> list[dict]:
        return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]

    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        first = events((await http.post("/v1/responses", json=body, headers=idem)).text)
        replay = await http.post("/v1/responses", json=body, headers=idem)
    again = events(replay.text)
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.headers["content-type"].startswith("text/event-stream")
    assert again[-1]["type"] == first[-1]["type"] == "response.incomplete"
    assert again[-1]["response"] == first[-1]["response"], "the same final response, ids and usage included"
    assert [event["sequence_number"] for event in again] == list(range(len(again)))
    text = "".join(event["delta"] for event in again if event["type"] == "response.output_text.delta")
    assert text == first[-1]["response"]["output"][0]["content"][0]["text"]
    assert sum(len(worker.behaviour.received) for worker in platform.workers) == 1


async def test_a_replay_after_the_admin_token_rotated_is_a_409_never_a_500(platform, tenant, db, monkeypatch):
    import msgspec
    from lorafleet.core.ids import random_token

    services = platform.app.state.services
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    grant = {"amount_micro_usd": 1_000}
    async with admin(platform, platform.env) as api:
        assert (await api.post(f"/admin/tenants/{tenant.tenant_id}/credits", json=grant, headers=idem)).status_code == 201
    rotated = random_token(32)
    monkeypatch.setattr(services, "settings", msgspec.structs.replace(services.settings, admin_token=rotated))
    async with admin(platform, {"LORAFLEET_ADMIN_TOKEN": rotated}) as api:
        replay = await api.post(f"/admin/tenants/{tenant.tenant_id}/credits", json=grant, headers=idem)
        fresh = await api.post(f"/admin/tenants/{tenant.tenant_id}/credits", json=grant,
                               headers={"Idempotency-Key": str(uuid.uuid4())})
    assert replay.status_code == 409, replay.text
    error = replay.json()["error"]
    assert error["code"] == "idempotency_result_unreadable" and error["param"] == "Idempotency-Key"
    assert "not run again" in error["message"]
    assert fresh.status_code == 201, "the new token works with a new key"
    granted = await db.fetchval("SELECT credit_granted_micro_usd FROM tenant_accounts WHERE tenant_id = $1",
                                tenant.tenant_id)
    assert granted == 2_000, "the first grant was not applied again"
