"""`lorafleet tenants/keys … --json` print one JSON document each, against the real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env["LORAFLEET_DATABASE_URL"] = database_url
    env["LORAFLEET_DATA_DIR"] = tempfile.mkdtemp()  # no `lorafleet up` state to fall back on
    return subprocess.run([sys.executable, "-m", "lorafleet.cli.main", *args], env=env, capture_output=True, text=True)


def _json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # exactly one document: json.loads rejects trailing data


def test_tenant_and_key_lifecycle_with_json(database_url):
    tenant = _json(_cli(database_url, "tenants", "create", "Acme Inc", "--json"))
    assert tenant["id"].startswith("ten_") and tenant["name"] == "Acme Inc"

    key = _json(_cli(database_url, "keys", "create", "--tenant", tenant["id"], "--name", "ci",
                     "--scope", "inference", "--scope", "usage:read", "--json"))
    assert key["secret"].startswith("sk_live_") and key["scopes"] == ["inference", "usage:read"]

    listing = _json(_cli(database_url, "keys", "list", "--tenant", tenant["id"], "--json"))
    assert [k["id"] for k in listing["data"]] == [key["id"]]
    assert "secret" not in listing["data"][0] and key["secret"] not in json.dumps(listing)

    revoked = _json(_cli(database_url, "keys", "revoke", key["id"], "--json"))
    assert revoked["revoked_at"]


def test_cli_errors_are_clear(database_url):
    result = _cli(database_url, "keys", "create", "--tenant", "ten_missing", "--json")
    assert result.returncode != 0 and "no tenant" in result.stderr and "Traceback" not in result.stderr
    tenant = _json(_cli(database_url, "tenants", "create", "x", "--json"))
    result = _cli(database_url, "keys", "create", "--tenant", tenant["id"], "--scope", "root")
    assert result.returncode != 0 and "unknown scope" in result.stderr
    result = _cli("", "keys", "list", "--tenant", tenant["id"])
    assert result.returncode != 0 and "LORAFLEET_DATABASE_URL" in result.stderr


def test_money_commands(database_url):
    from lorafleet.core import ids

    tenant = _json(_cli(database_url, "tenants", "create", "Money Inc", "--json"))
    key = _json(_cli(database_url, "keys", "create", "--tenant", tenant["id"], "--json"))
    model = f"cli-model-{ids.random_token(6)}"
    import asyncio

    import asyncpg
    from lorafleet.db import queries

    async def add_model() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute(queries.upsert_base_model, ids.base_model_id(), model, 2048, "{}", 16, "generate")  # raw connection: jsonb as text
        finally:
            await connection.close()

    asyncio.run(add_model())
    price = _json(_cli(database_url, "prices", "set", model, "--prompt", "150000", "--completion", "600000",
                       "--adapter-surcharge", "10", "--effective-at", "2026-01-01", "--json"))
    assert (price["prompt_micro_usd_per_mtok"], price["completion_micro_usd_per_mtok"]) == (150000, 600000)
    assert price["effective_at"].startswith("2026-01-01T00:00:00")
    listed = _json(_cli(database_url, "prices", "list", "--json"))
    assert price["id"] in [p["id"] for p in listed["data"]]
    duplicate = _cli(database_url, "prices", "set", model, "--prompt", "1", "--completion", "1", "--effective-at",
                     "2026-01-01")
    assert duplicate.returncode != 0 and "already takes effect" in duplicate.stderr

    grant = _json(_cli(database_url, "credits", "grant", "--tenant", tenant["id"], "--amount", "2500000", "--json"))
    assert grant["amount_micro_usd"] == 2500000
    balance = _json(_cli(database_url, "tenants", "limits", "--tenant", tenant["id"], "--mode", "prepaid",
                         "--monthly-spend-limit", "9000000", "--max-concurrent", "3", "--json"))
    assert (balance["billing_mode"], balance["monthly_spend_limit_micro_usd"], balance["max_concurrent_requests"],
            balance["credit_remaining_micro_usd"]) == ("prepaid", 9000000, 3, 2500000)
    cleared = _json(_cli(database_url, "tenants", "limits", "--tenant", tenant["id"], "--monthly-spend-limit", "none",
                         "--json"))
    assert cleared["monthly_spend_limit_micro_usd"] is None and cleared["max_concurrent_requests"] == 3

    limits = _json(_cli(database_url, "keys", "limits", key["id"], "--rpm", "60", "--tpm", "none", "--json"))
    assert (limits["requests_per_minute"], limits["tokens_per_minute"]) == (60, None)

    closed = _json(_cli(database_url, "billing", "close-period", "--month", "2020-01", "--json"))
    assert closed == {"month": "2020-01", "invoices": []}
    not_over = _cli(database_url, "billing", "close-period", "--month", "2999-01")
    assert not_over.returncode != 0 and "has not ended" in not_over.stderr
    bad_month = _cli(database_url, "billing", "close-period", "--month", "January")
    assert bad_month.returncode != 0 and "2026-11" in bad_month.stderr and "Traceback" not in bad_month.stderr
    rebuilt = _json(_cli(database_url, "billing", "rebuild-rollups", "--json"))
    assert set(rebuilt) == {"hourly_rows", "daily_rows"}
    stripe_off = _cli(database_url, "billing", "export-stripe")
    assert stripe_off.returncode != 0 and "LORAFLEET_STRIPE_API_KEY" in stripe_off.stderr
