"""Hostile and malformed input: a precise 4xx in the OpenAI envelope, never a 500 or a stack trace."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import openai
import pytest
from lorafleet.db.migrate import migrate
from lorafleet.tenancy import TenancyService

from tests.helpers import ledger_row

pytestmark = pytest.mark.engine


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body["error"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"", 400, None),
        (b"not json", 400, None),
        (b"[]", 400, None),
        (b'{"model": 5, "messages": []}', 400, "model"),
        (b'{"model": "m", "messages": "hi"}', 400, "messages"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 1000}', 400, "n"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "stream"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": {"x": 1}}', 400, "stream_options.x"),
        (b'{"model": "\\u0000", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, None),
    ],
)
async def test_bad_bodies(gateway, tenant_key, body, status, param):
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        response = await http.post(
            "/v1/chat/completions", content=body,
            headers={"Authorization": f"Bearer {tenant_key.secret}", "Content-Type": "application/json"},
        )
    assert response.status_code == status, response.text
    assert _error(response)["param"] == param


async def test_oversized_body_is_413(gateway, tenant_key):
    huge = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"a" * (5 * 1024 * 1024) + b'"}]}'
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        response = await http.post("/v1/chat/completions", content=huge,
                                   headers={"Authorization": f"Bearer {tenant_key.secret}"})
    assert response.status_code == 413
    assert _error(response)["code"] == "request_too_large"


async def test_unknown_routes_and_methods(gateway):
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert _error(await http.get("/v1/nope"))["code"] == "not_found"
        response = await http.put("/v1/chat/completions")
        assert response.status_code == 405 and _error(response)["code"] == "method_not_allowed"


async def test_no_ready_worker_is_503(gateways, databases, tenant_key, model_name):
    # A gateway whose database has the base model but no live worker.
    dsn = await databases.create()
    await migrate(dsn)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("INSERT INTO base_models (id, name, max_model_len) VALUES ('bm_x', $1, 2048)", model_name)
        service = TenancyService(connection)
        tenant = await service.create_tenant("lonely")
        key = await service.create_key(tenant.id)
    finally:
        await connection.close()
    # Held no longer than a moment: how long a hold lasts is test_serverless.py's; this is the answer after it.
    lonely = await asyncio.to_thread(gateways.start, "/healthz", LORAFLEET_DATABASE_URL=dsn, LORAFLEET_WAKE_TIMEOUT_SECONDS="2")
    async with httpx.AsyncClient(base_url=lonely.url) as http:
        assert (await http.get("/readyz")).json()["workers_ready"] == 0, "ready to serve: its database answers"
        ready = await http.get("/readyz?workers=1")
        assert ready.status_code == 503 and _error(ready)["code"] == "no_worker_ready"
    async with openai.AsyncOpenAI(base_url=lonely.url + "/v1", api_key=key.secret, max_retries=0) as sdk:
        with pytest.raises(openai.InternalServerError) as caught:
            await sdk.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 503
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        row = await ledger_row(pool, caught.value.response.headers["x-request-id"])
    finally:
        await pool.close()
    assert (row["outcome"], row["http_status"], row["completion_tokens"]) == ("unavailable", 503, 0)
