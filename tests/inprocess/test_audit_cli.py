"""The operator's CLI commands that change the database directly each leave one audit event (actor
``cli:<user>``, in the change's own transaction), and `lorafleet audit list` reads the log back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile

from lorafleet.core import ids
from lorafleet.core.ids import random_token
from lorafleet.db import queries


def _run(database_url: str, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env.update({"LORAFLEET_DATABASE_URL": database_url, "LORAFLEET_DATA_DIR": tempfile.mkdtemp()})
    done = subprocess.run([sys.executable, "-m", "lorafleet.cli.main", *args, "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stdout, done.stderr)
    return json.loads(done.stdout)


async def test_every_changing_cli_command_leaves_one_event(inprocess_database_url, db):
    async def run(*args: str) -> dict:
        return await asyncio.to_thread(_run, inprocess_database_url, *args)

    base = f"cli-audit-{random_token(6)}"
    await db.execute(queries.upsert_base_model, ids.base_model_id(), base, 2048, {}, 16, "generate")
    before = await db.fetchval("SELECT coalesce(max(seq), 0) FROM audit_log")
    tenant = await run("tenants", "create", "audited-by-cli")
    key = await run("keys", "create", "--tenant", tenant["id"], "--name", "cli", "--scope", "inference")
    steps = [("organization.created", tenant["id"], tenant["id"]), ("api_key.created", key["id"], tenant["id"])]
    await run("keys", "limits", key["id"], "--rpm", "5")
    steps.append(("rate_limit.updated", key["id"], tenant["id"]))
    await run("keys", "revoke", key["id"])
    steps.append(("api_key.deleted", key["id"], tenant["id"]))
    grant = await run("credits", "grant", "--tenant", tenant["id"], "--amount", "$1", "--reason", "welcome")
    steps.append(("credit.granted", grant["id"], tenant["id"]))
    await run("tenants", "limits", "--tenant", tenant["id"], "--monthly-spend-limit", "$5")
    steps.append(("organization.updated", tenant["id"], tenant["id"]))
    price = await run("prices", "set", base, "--prompt", "1", "--completion", "2")
    steps.append(("price.created", str(price["id"]), None))
    link = await run("dashboard", "link", "--tenant", tenant["id"])
    steps.append(("login_link.created", None, tenant["id"]))
    rows = await db.fetch("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq", before)
    assert [(r["type"], r["resource_id"], r["tenant_id"]) for r in rows] == steps
    assert {(r["actor_kind"], r["actor_id"].split(":")[0], r["user_agent"]) for r in rows} == \
        {("operator", "cli", "lorafleet-cli")}
    assert rows[1]["details"]["fields"] == {"name": "cli", "scopes": ["inference"], "mode": "live"}
    assert rows[5]["details"]["fields"] == {"monthly_spend_limit_micro_usd": 5_000_000}
    table = str([dict(r) for r in rows])
    assert key["secret"] not in table and link["url"].rsplit("/", 1)[-1] not in table

    listed = await run("audit", "list", "--tenant", tenant["id"], "--limit", "100")
    assert [e["type"] for e in listed["data"]] == [step[0] for step in reversed(steps) if step[2]]
    only = await run("audit", "list", "--type", "price.created", "--limit", "1")
    assert only["data"][0]["price.created"]["id"] == str(price["id"])


async def test_webhook_delivery_log_and_replay(inprocess_database_url, db, platform, tenant):
    import httpx

    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        made = await http.post("/v1/webhook_endpoints", json={"url": "https://unreachable.invalid/in", "name": "cli",
                                                              "event_types": ["batch.failed"]})
        assert made.status_code == 200, made.text
    event_id = ids.new_id("evt")
    # As the triggers on batches write it (migrations/0024): the outbox row fans out into a delivery.
    await db.execute("INSERT INTO webhook_events (id, tenant_id, type, data) VALUES ($1, $2, 'batch.failed', $3)",
                     event_id, tenant.tenant_id, {"id": "batch_x"})
    listed = await asyncio.to_thread(_run, inprocess_database_url, "webhooks", "deliveries", "--tenant",
                                     tenant.tenant_id)
    assert [(d["event_id"], d["endpoint_id"], d["event_type"]) for d in listed["data"]] == \
        [(event_id, made.json()["id"], "batch.failed")]
    delivery_id = listed["data"][0]["id"]
    before = await db.fetchval("SELECT coalesce(max(seq), 0) FROM audit_log")
    replayed = await asyncio.to_thread(_run, inprocess_database_url, "webhooks", "replay", delivery_id)
    assert replayed == {"id": delivery_id, "tenant_id": tenant.tenant_id, "status": "pending"}
    rows = await db.fetch("SELECT type, resource_id, tenant_id, actor_kind FROM audit_log WHERE seq > $1", before)
    assert [tuple(r) for r in rows] == [("webhook_delivery.replayed", delivery_id, tenant.tenant_id, "operator")]
