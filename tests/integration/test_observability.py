"""One JSON log line per request without secrets or prompt text; metrics; OpenAPI; health."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

pytestmark = pytest.mark.engine


async def test_one_log_line_per_request_without_secrets_or_prompts(gateway, client, tenant_key, model_name):
    marker = "zebra-marmalade-4471"
    raw = await client.chat.completions.with_raw_response.create(
        model=model_name, messages=[{"role": "user", "content": f"Repeat: {marker}"}], max_tokens=12,
        extra_body={"top_k": 5}, store=True, metadata={"note": marker},
    )
    request_id = raw.headers["x-request-id"]
    usage = raw.parse().usage
    await asyncio.sleep(0.3)
    text = gateway.log_text()
    assert tenant_key.secret not in text
    assert marker not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == request_id]
    assert len(mine) == 1
    entry = mine[0]
    assert entry["event"] == "request" and entry["status"] == 200
    assert (entry["tenant_id"], entry["key_id"], entry["model"]) == (tenant_key.tenant_id, tenant_key.key_id, model_name)
    assert (entry["prompt_tokens"], entry["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert entry["latency_ms"] > 0 and entry["dropped_fields"] == ["store", "metadata"], "names only, never values"


async def test_metrics_health_and_openapi(gateway, client, model_name, db):
    await client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/healthz")).json() == (await http.get("/livez")).json() == {"status": "ok"}
        live_workers = await db.fetchval("SELECT count(*) FROM workers WHERE heartbeat_at > now() - interval '15 seconds'")
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["workers_ready"] == live_workers >= 1
        metrics = (await http.get("/metrics")).text
        assert 'lorafleet_http_requests_total{route="/v1/chat/completions",status="200"}' in metrics
        assert 'lorafleet_tokens_total{kind="completion"}' in metrics
        assert f"lorafleet_workers_ready {float(live_workers)}" in metrics
        schema = (await http.get("/openapi/openapi.json")).json()
    operations = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {"createChatCompletion", "createCompletion", "listModels", "createKey", "listKeys", "revokeKey"} <= operations


async def test_metrics_name_no_adapter_or_worker_address_and_can_require_a_token(gateways, client, tenant_key, worker,
                                                                               model_name, db):
    adapters = await db.fetch("SELECT name FROM adapters WHERE status = 'ready'")
    protected = await asyncio.to_thread(gateways.start, "/healthz", LORAFLEET_METRICS_TOKEN="scrape-me-0123456789")
    async with httpx.AsyncClient(base_url=protected.url) as http:
        await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {tenant_key.secret}"},
                        json={"model": model_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
        scraped = await http.get("/metrics", headers={"Authorization": "Bearer scrape-me-0123456789"})
    assert scraped.status_code == 200
    text = scraped.text
    assert f'lorafleet_time_to_first_token_seconds_count{{base_model="{model_name}",kind="base"}}' in text
    assert worker.url not in text and "127.0.0.1" not in text
    assert "adp_" not in text
    assert not [row["name"] for row in adapters if f'"{row["name"]}"' in text], "an adapter's name in a label"
