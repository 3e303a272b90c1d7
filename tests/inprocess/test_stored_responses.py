"""Stored responses are bounded and cheap to chain: a per-tenant quota and a per-document cap, a
``previous_response_id`` walk that reads only what it renders and only once the request is admitted,
reads that count against the key's requests per minute (issue 21, finding 3)."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from lorafleet.db import queries
from lorafleet.tenancy.storage import StorageQuota

from tests.helpers import admin, eventually, wait_rows
from tests.inprocess.conftest import STUB_MODEL


def _received(platform) -> int:
    return sum(len(worker.behaviour.received) for worker in platform.workers)


async def _usage(db, tenant_id: str) -> tuple[int, int]:
    row = await db.fetchrow("SELECT bytes, objects FROM tenant_storage WHERE tenant_id = $1 AND kind = 'responses'",
                            tenant_id)
    return (row["bytes"], row["objects"]) if row else (0, 0)


@pytest.fixture
def storage(platform, monkeypatch):
    """The gateway's stored-responses quota, for a test to lower."""
    store = platform.app.state.services.responses.storage

    def limit(**changes: int) -> None:
        quota = store.quota
        monkeypatch.setattr(store, "quota", StorageQuota(changes.get("max_bytes", quota.max_bytes),
                                                         changes.get("max_objects", quota.max_objects),
                                                         changes.get("max_object_bytes", quota.max_object_bytes)))

    return limit


async def test_a_tenant_at_its_stored_responses_quota_is_refused_before_anything_runs(platform, tenant, other_tenant,
                                                                                     db, storage):
    storage(max_objects=2)
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        first = (await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "one"})).json()
        await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "two"})
        used = await _usage(db, tenant.tenant_id)
        assert used[1] == 2 and used[0] == await db.fetchval(
            "SELECT sum(stored_bytes) FROM responses WHERE tenant_id = $1", tenant.tenant_id)
        before = _received(platform)
        refused = await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "three"})
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "storage_quota_exceeded"
        assert refused.json()["error"]["param"] == "store"
        assert _received(platform) == before, "a refused request reached a worker"
        unstored = await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "three", "store": False})
        assert unstored.status_code == 200, "store: false needs no room"
        assert (await http.delete(f"/v1/responses/{first['id']}")).status_code == 200
        left = await db.fetchval("SELECT sum(stored_bytes) FROM responses WHERE tenant_id = $1", tenant.tenant_id)
        assert await _usage(db, tenant.tenant_id) == (left, 1), "a delete gives its bytes back"
        again = await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "three"})
        assert again.status_code == 200 and again.json()["store"] is True
    async with httpx.AsyncClient(base_url=platform.url, headers=other_tenant.headers, timeout=30) as http:
        theirs = await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "one"})
    assert theirs.status_code == 200, "the quota is per tenant"


async def test_a_response_whose_output_would_pass_the_quota_is_answered_and_not_stored(platform, tenant, db, storage):
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        first = (await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "same size"})).json()
        one = await db.fetchval("SELECT stored_bytes FROM responses WHERE id = $1", first["id"])
        used = await _usage(db, tenant.tenant_id)
        # Room for the request's own part (known before it runs), not for its output as well.
        storage(max_bytes=used[0] + one - 1)
        answered = await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "same size"})
        streamed = await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "same size", "stream": True})
        assert answered.status_code == streamed.status_code == 200
        final = [line for line in streamed.text.splitlines() if line.startswith("data: ")][-1]
        assert '"store":false' in final, "the streamed answer says it was not kept"
        body = answered.json()
        assert body["output"][0]["content"][0]["text"] and body["store"] is False
        assert (await http.get(f"/v1/responses/{body['id']}")).status_code == 404
    assert await _usage(db, tenant.tenant_id) == used


async def test_a_request_too_large_to_store_is_refused_unless_store_is_false(platform, tenant, db, storage):
    storage(max_object_bytes=4096)
    body = {"model": STUB_MODEL, "input": "hi", "max_output_tokens": 1,
            "text": {"format": {"type": "json_schema", "name": "s", "description": "d" * 8000,
                                "schema": {"type": "object"}}}}
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        before = _received(platform)
        refused = await http.post("/v1/responses", json=body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "stored_object_too_large"
        assert refused.json()["error"]["param"] == "store"
        assert _received(platform) == before
    assert await db.fetchval("SELECT count(*) FROM responses WHERE tenant_id = $1", tenant.tenant_id) == 0
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id) == 0


async def test_a_chain_walk_reads_only_the_turns_input_and_output_never_the_request_document(platform, tenant, db):
    # A 700 kB schema description that does not compress: PostgreSQL keeps it in ~90 TOAST pages.
    description = os.urandom(350_000).hex()
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        first = (await http.post("/v1/responses", json={
            "model": STUB_MODEL, "input": "turn one", "max_output_tokens": 8,
            "text": {"format": {"type": "json_schema", "name": "s", "description": description,
                                "schema": {"type": "object"}}}})).json()
        second = await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "turn two",
                                                        "previous_response_id": first["id"]})
        assert second.status_code == 200, second.text
        sent = platform.workers[0].behaviour.received[-1:] + platform.workers[1].behaviour.received[-1:]
        assert any([m["content"] for m in body["messages"]] == ["turn one", "ok " * 8, "turn two"] for body in sent)
        # Read back whole, the document still has everything it was answered with.
        fetched = (await http.get(f"/v1/responses/{first['id']}")).json()
        assert fetched["text"]["format"]["description"] == description and fetched["output"] == first["output"]

    async def buffers(sql: str) -> int:
        """Shared buffers (table, index and TOAST pages) the statement touches, as PostgreSQL counts them."""
        plan = await db.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", second.json()["id"],
                                 tenant.tenant_id, 1000, 8 * 1024 * 1024)
        top = json.loads(plan)[0]["Plan"] if isinstance(plan, str) else plan[0]["Plan"]
        return top["Shared Hit Blocks"] + top["Shared Read Blocks"]

    # The same walk reading each turn's output out of its document, as it did before output had a column.
    loading_documents = queries.response_chain.replace("r.output END", "r.document -> 'text' END")
    assert await buffers(loading_documents) > 80, "the measurement sees a document being read"
    assert await buffers(queries.response_chain) < 40


async def test_an_over_budget_key_walks_nothing(platform, tenant, db, monkeypatch):
    services = platform.app.state.services
    walks: list[str] = []
    real_history = services.responses.history

    async def counting_history(tenant_id: str, response_id: str):
        walks.append(response_id)
        return await real_history(tenant_id, response_id)

    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        first = (await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "one"})).json()
        monkeypatch.setattr(services.responses, "history", counting_history)
        async with admin(platform, platform.env) as api:
            assert (await api.patch(f"/admin/tenants/{tenant.tenant_id}",
                                    json={"billing_mode": "prepaid"})).status_code == 200
            assert (await api.post(f"/admin/tenants/{tenant.tenant_id}/credits",
                                   json={"amount_micro_usd": -1, "reason": "overdrawn"})).status_code == 201
        # Until this gateway's key cache notices the account is metered now.
        await eventually(lambda: http.post("/v1/responses", json={"model": STUB_MODEL, "input": "x", "store": False}),
                         lambda answer: answer.status_code == 402, what="a 402 for the overdrawn account")
        before = _received(platform)
        chained = {"model": STUB_MODEL, "input": "two", "previous_response_id": first["id"]}
        for _ in range(3):
            refused = await http.post("/v1/responses", json=chained)
            assert refused.status_code == 402 and refused.json()["error"]["code"] == "insufficient_quota"
        assert walks == [] and _received(platform) == before
        async with admin(platform, platform.env) as api:
            await api.post(f"/admin/tenants/{tenant.tenant_id}/credits", json={"amount_micro_usd": 1_000_000})
        admitted = await http.post("/v1/responses", json=chained)
    assert admitted.status_code == 200 and walks == [first["id"]], "once admitted, the chain is read"


async def test_reads_of_stored_responses_count_against_the_keys_requests_per_minute(platform, tenant, db):
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        created = (await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "hi"})).json()
        async with admin(platform, platform.env) as api:
            assert (await api.patch(f"/admin/keys/{tenant.key_id}", json={"requests_per_minute": 2})).status_code == 200
        path = f"/v1/responses/{created['id']}"
        # Until the key cache has the limit: that read is the first of the two a minute allows.
        first = await eventually(lambda: http.get(path),
                                 lambda answer: "x-ratelimit-limit-requests" in answer.headers, what="a limited read")
        assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == "2"
        second = await http.get(f"{path}/input_items")
        third = await http.get(path)
        fourth = await http.get(f"{path}/input_items")
    assert second.status_code == 200
    for refused in (third, fourth):
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(refused.headers["Retry-After"]) >= 1
    await wait_rows(db, tenant.tenant_id, 1)
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id) == 1, \
        "reads are not billed"


async def test_responses_stored_before_0013_are_still_read_chained_and_counted(databases, tmp_path):
    """Migration 0013 moves each stored output into its own column and counts what every tenant keeps;
    a chain through such a row (its length not recorded) is still bounded, walked and continued."""
    import shutil

    from lorafleet.db import create_pool
    from lorafleet.db.migrate import migrate, migrations_dir
    from lorafleet.gateway.responses_api.store import ResponseStore
    from lorafleet.tenancy import TenancyService
    from lorafleet.tenancy.storage import TenantStorage, Usage

    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in sorted(migrations_dir().glob("*.sql")):
        if path.name < "0013":
            shutil.copy(path, earlier / path.name)
    dsn = await databases.create("legacy_responses")
    await migrate(dsn, earlier)
    pool = await create_pool(dsn, max_size=2)
    try:
        tenant = await TenancyService(pool).create_tenant("legacy")
        items = [{"type": "message", "id": "msg_in", "role": "user", "status": "completed",
                  "content": [{"type": "input_text", "text": "hello"}]}]
        output = [{"type": "message", "id": "msg_out", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": "hi there", "annotations": []}]}]
        document = {"id": "resp_legacy1", "object": "response", "status": "completed", "output": output,
                    "tools": [], "text": {"format": {"type": "text"}}}
        await pool.execute("INSERT INTO responses (id, tenant_id, api_key_id, previous_response_id, input, document, "
                           "expires_at) VALUES ('resp_legacy1', $1, 'key_x', NULL, $2, $3, now() + interval '1 day')",
                           tenant.id, items, document)
        await migrate(dsn)
        store = ResponseStore(pool, 30, TenantStorage(pool, "responses", StorageQuota(1 << 30, 1000, 1 << 20),
                                                      noun="stored responses"))
        assert json.loads(await store.get(tenant.id, "resp_legacy1")) == document
        assert await store.history(tenant.id, "resp_legacy1") == items + output
        head = await store.head(tenant.id, "resp_legacy1")
        assert head.turns is None and head.history_bytes is None, "unknown: bounded by the whole context"
        used = await store.storage.usage(tenant.id)
        assert used.objects == 1 and used.bytes > 0
        follow = {"id": "resp_legacy2", "object": "response", "status": "completed", "output": output,
                  "previous_response_id": "resp_legacy1"}
        assert await store.save(tenant.id, "key_x", items, follow, head)
        assert await store.history(tenant.id, "resp_legacy2") == (items + output) * 2
        assert (await store.storage.usage(tenant.id)).objects == 2
        await store.delete(tenant.id, "resp_legacy1")
        left = await pool.fetchval("SELECT stored_bytes FROM responses WHERE id = 'resp_legacy2'")
        assert await store.storage.usage(tenant.id) == Usage(left, 1), "a delete gives its bytes back"
    finally:
        await pool.close()


async def test_a_retry_of_the_response_that_filled_the_quota_is_replayed(platform, tenant, storage):
    import uuid

    storage(max_objects=1)
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"model": STUB_MODEL, "input": "the last one that fits"}
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        first = await http.post("/v1/responses", json=body, headers=idem)
        retry = await http.post("/v1/responses", json=body, headers=idem)
        another = await http.post("/v1/responses", json=body)
    assert first.status_code == retry.status_code == 200 and retry.json() == first.json()
    assert another.status_code == 409 and another.json()["error"]["code"] == "storage_quota_exceeded"


async def test_by_default_a_megabytes_request_is_not_stored_for_a_month(platform, tenant, db):
    """Finding 3: megabytes stored for 30 days for a few µUSD. The default cap (1 MiB a response)
    refuses to store it before it runs, unbilled (store: false would serve it: see the test above)."""
    body = {"model": STUB_MODEL, "input": "x" * 1_500_000, "max_output_tokens": 1}
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        before = _received(platform)
        refused = await http.post("/v1/responses", json=body)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "stored_object_too_large"
        assert _received(platform) == before
    assert await db.fetchval("SELECT count(*) FROM responses WHERE tenant_id = $1", tenant.tenant_id) == 0
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id) == 0


async def test_a_chain_found_broken_once_admitted_settles_its_admission_unbilled(platform, tenant, db):
    """The chain's row said it was whole; the walk (after admission) finds a turn gone: a 404, and
    the admission is settled by a ledger row of nothing, never left reserved."""
    from tests.helpers import ledger_row, settled

    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        first = (await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "one"})).json()
        second = (await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "two",
                                                         "previous_response_id": first["id"]})).json()
        async with admin(platform, platform.env) as api:  # a metered account: admission reserves in PostgreSQL
            assert (await api.patch(f"/admin/keys/{tenant.key_id}", json={"requests_per_minute": 1000})).status_code == 200
        await eventually(lambda: http.post("/v1/responses", json={"model": STUB_MODEL, "input": "x", "store": False}),
                         lambda answer: "x-ratelimit-limit-requests" in answer.headers, what="a metered admission")
        await http.delete(f"/v1/responses/{first['id']}")
        before = _received(platform)
        broken = await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "three",
                                                        "previous_response_id": second["id"]})
    assert broken.status_code == 404 and broken.json()["error"]["param"] == "previous_response_id"
    assert _received(platform) == before
    row = await ledger_row(db, broken.headers["x-request-id"])
    assert (row["http_status"], row["prompt_tokens"], row["completion_tokens"], row["cost_pico_usd"]) == (404, 0, 0, 0)
    account = await settled(db, tenant.tenant_id)
    assert account["in_flight"] == 0 and account["reserved_micro_usd"] == 0


async def test_expired_responses_give_their_bytes_back(platform, tenant, db):
    from lorafleet.gateway.janitor import RetentionJanitor

    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        kept = (await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "kept"})).json()
        gone = (await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "gone"})).json()
    await db.execute("UPDATE responses SET expires_at = now() - interval '1 second' WHERE id = $1", gone["id"])
    await RetentionJanitor(db).sweep()
    left = await db.fetchval("SELECT stored_bytes FROM responses WHERE id = $1", kept["id"])
    assert await _usage(db, tenant.tenant_id) == (left, 1)
    assert await db.fetchval("SELECT count(*) FROM responses WHERE id = $1", gone["id"]) == 0
