"""`lorafleet tenants|keys|prices|credits …` against the real database and gateway: each command's JSON is
checked against what the API and the database say, and its effect on requests is seen through the gateway.

Errors: a failing command exits 1 with one line (never a traceback); under --json it prints the API's error
envelope on stdout. Argument errors (exit 2) are in tests/unit/test_cli_arguments.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile

import httpx
import pytest
from lorafleet.core import ids
from lorafleet.devtools.services import free_port

from tests.helpers import admin, eventually, half_up, ledger_cost, settled, wait_rows

pytestmark = pytest.mark.engine


def _env(base: dict[str, str], **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env.update(base)
    env["LORAFLEET_DATA_DIR"] = tempfile.mkdtemp()  # no `lorafleet up` state to fall back on
    env.update(overrides)
    return env


def _cli(base: dict[str, str], *args: str, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorafleet.cli.main", *args], env=_env(base, **overrides),
                          capture_output=True, text=True, timeout=300)


async def _acli(base: dict[str, str], *args: str, **overrides: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(_cli, base, *args, **overrides)


def _json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)  # exactly one document: json.loads rejects trailing data


def _failure(result: subprocess.CompletedProcess, code: str, exit_code: int = 1) -> dict:
    """A failed --json command: its exit code, one envelope on stdout, no traceback anywhere."""
    assert result.returncode == exit_code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    error = json.loads(result.stdout)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    return error


def _db(database_url: str) -> dict[str, str]:
    return {"LORAFLEET_DATABASE_URL": database_url}


async def test_tenant_and_key_lifecycle(gateway, base_env):
    tenant = _json(await _acli(base_env, "tenants", "create", "Acme Inc", "--json"))
    assert tenant["id"].startswith("ten_") and tenant["name"] == "Acme Inc" and tenant["object"] == "tenant"
    async with admin(gateway, base_env) as api:
        shown = (await api.get(f"/admin/tenants/{tenant['id']}")).json()
    assert shown["tenant_name"] == "Acme Inc" and shown["billing_mode"] == "postpaid"
    human = await _acli(base_env, "tenants", "create", "Beta LLC")
    assert human.returncode == 0 and human.stdout.startswith("created tenant ten_") and "(Beta LLC)" in human.stdout

    key = _json(await _acli(base_env, "keys", "create", "--tenant", tenant["id"], "--name", "ci",
                            "--scope", "inference", "--scope", "usage:read", "--json"))
    assert key["secret"].startswith("sk_live_") and key["scopes"] == ["inference", "usage:read"]
    assert key["tenant_id"] == tenant["id"] and key["name"] == "ci"
    test_key = _json(await _acli(base_env, "keys", "create", "--tenant", tenant["id"], "--test", "--json"))
    assert test_key["secret"].startswith("sk_test_") and test_key["mode"] == "test"

    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        as_key = {"Authorization": f"Bearer {key['secret']}"}
        assert (await http.get("/v1/models", headers=as_key)).status_code == 200
        assert (await http.get("/v1/keys", headers=as_key)).status_code == 403  # the scopes it was given, no more

        listing = _json(await _acli(base_env, "keys", "list", "--tenant", tenant["id"], "--json"))
        assert [k["id"] for k in listing["data"]] == [key["id"], test_key["id"]]
        assert "secret" not in listing["data"][0] and key["secret"] not in json.dumps(listing)
        human = await _acli(base_env, "keys", "list", "--tenant", tenant["id"])
        assert human.returncode == 0 and key["display_prefix"] in human.stdout and "active" in human.stdout

        revoked = _json(await _acli(base_env, "keys", "revoke", key["id"], "--json"))
        assert revoked["id"] == key["id"] and revoked["revoked_at"]
        await eventually(lambda: http.get("/v1/models", headers=as_key), lambda r: r.status_code == 401,
                         what="the revoked key refused")
        after = _json(await _acli(base_env, "keys", "list", "--tenant", tenant["id"], "--json"))
        assert [k["revoked_at"] is not None for k in after["data"]] == [True, False]

    missing = _failure(await _acli(base_env, "keys", "list", "--tenant", "ten_missing", "--json"), "not_found")
    assert missing["param"] == "tenant" and "ten_missing" in missing["message"]
    human_missing = await _acli(base_env, "keys", "revoke", "key_missing")
    assert human_missing.returncode == 1 and human_missing.stdout == ""
    assert human_missing.stderr.strip().splitlines() == ["Error: no API key 'key_missing'"]


async def _request(http: httpx.AsyncClient, secret: str, model: str) -> httpx.Response:
    return await http.post("/v1/completions", headers={"Authorization": f"Bearer {secret}"},
                           json={"model": model, "prompt": "Count: one, two,", "max_tokens": 2})


async def test_tenants_list_shows_status_limits_and_spend(gateway, base_env, db, model_name, make_key):
    created = {}
    for label in ("payer", "capped", "empty", "funded"):
        created[label] = _json(await _acli(base_env, "tenants", "create", f"roster-{label}", "--json"))
    tenant_ids = {label: tenant["id"] for label, tenant in created.items()}
    _json(await _acli(base_env, "tenants", "limits", "--tenant", tenant_ids["payer"], "--monthly-spend-limit", "$5",
                      "--json"))
    _json(await _acli(base_env, "tenants", "limits", "--tenant", tenant_ids["capped"], "--monthly-spend-limit", "0",
                      "--json"))
    _json(await _acli(base_env, "tenants", "limits", "--tenant", tenant_ids["empty"], "--mode", "prepaid", "--json"))
    _json(await _acli(base_env, "tenants", "limits", "--tenant", tenant_ids["funded"], "--mode", "prepaid",
                      "--max-concurrent", "4", "--json"))
    _json(await _acli(base_env, "credits", "grant", "--tenant", tenant_ids["funded"], "--amount", "$1", "--json"))
    keys = {label: await make_key(tenant_id=tenant_id) for label, tenant_id in tenant_ids.items()}

    price = _json(await _acli(base_env, "prices", "set", model_name, "--prompt", "$0.10", "--completion", "$0.20",
                              "--json"))
    assert (price["prompt_micro_usd_per_mtok"], price["completion_micro_usd_per_mtok"]) == (100_000, 200_000)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as http:
        async def latest_price() -> int | None:  # the gateway takes a new price within its catalog refresh
            response = await _request(http, keys["payer"].secret, model_name)
            assert response.status_code == 200, response.text
            return await db.fetchval("SELECT price_id FROM usage_ledger WHERE tenant_id = $1 ORDER BY started_at DESC "
                                     "LIMIT 1", keys["payer"].tenant_id)

        await eventually(latest_price, lambda found: found == price["id"], timeout=30, interval=0.3,
                         what="a request priced with the new price")
        await settled(db, keys["payer"].tenant_id)

        refused = {label: await _request(http, keys[label].secret, model_name) for label in ("capped", "empty")}
        assert {label: r.status_code for label, r in refused.items()} == {"capped": 402, "empty": 402}
        assert (await _request(http, keys["funded"].secret, model_name)).status_code == 200
    await wait_rows(db, keys["funded"].tenant_id, 1)
    await settled(db, keys["funded"].tenant_id)

    listing = _json(await _acli(base_env, "tenants", "list", "--json"))
    assert listing["object"] == "list" and listing["has_more"] is False
    rows = {row["id"]: row for row in listing["data"]}
    ours = [row["id"] for row in listing["data"] if row["id"] in tenant_ids.values()]
    assert ours == list(tenant_ids.values()), "oldest first"
    by_label = {label: rows[tenant_id] for label, tenant_id in tenant_ids.items()}
    assert {label: row["status"] for label, row in by_label.items()} == {
        "payer": "active", "capped": "spend_limit_reached", "empty": "out_of_credit", "funded": "active"}
    for label, row in by_label.items():
        assert (row["name"], row["created_at"]) == (created[label]["name"], created[label]["created_at"])

    payer = by_label["payer"]
    spent = half_up(await ledger_cost(db, tenant_ids["payer"]))  # the exact pico-USD, shown rounded once
    assert spent > 0 and payer["period_spent_micro_usd"] == spent
    assert (payer["monthly_spend_limit_micro_usd"], payer["billing_mode"]) == (5_000_000, "postpaid")
    funded = by_label["funded"]
    funded_spent = await ledger_cost(db, tenant_ids["funded"])
    assert funded["credit_remaining_micro_usd"] == half_up(1_000_000 * 1_000_000 - funded_spent)
    assert funded["max_concurrent_requests"] == 4
    async with admin(gateway, base_env) as api:  # the operator API reports the same accounts
        for label, row in by_label.items():
            account = (await api.get(f"/admin/tenants/{row['id']}")).json()
            for field in ("billing_mode", "period_spent_micro_usd", "monthly_spend_limit_micro_usd",
                          "max_concurrent_requests", "credit_granted_micro_usd", "credit_remaining_micro_usd"):
                assert row[field] == account[field], (label, field)

    human = await _acli(base_env, "tenants", "list")
    assert human.returncode == 0
    line = next(line for line in human.stdout.splitlines() if line.startswith(tenant_ids["capped"]))
    assert "roster-capped" in line and "spend_limit_reached" in line and "of $0.000000" in line
    payer_line = next(line for line in human.stdout.splitlines() if line.startswith(tenant_ids["payer"]))
    assert f"spent ${spent // 1_000_000}.{spent % 1_000_000:06d} of $5.000000" in payer_line


async def test_key_limits_take_effect(gateway, base_env, db, model_name, make_key):
    key = await make_key()
    limits = _json(await _acli(base_env, "keys", "limits", key.key_id, "--rpm", "1", "--tpm", "none", "--json"))
    assert (limits["id"], limits["requests_per_minute"], limits["tokens_per_minute"]) == (key.key_id, 1, None)
    row = await db.fetchrow("SELECT requests_per_minute, tokens_per_minute FROM api_keys WHERE id = $1", key.key_id)
    assert (row["requests_per_minute"], row["tokens_per_minute"]) == (1, None)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as http:
        assert (await _request(http, key.secret, model_name)).status_code == 200
        limited = await _request(http, key.secret, model_name)  # one a minute: the second waits a minute
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
        human = await _acli(base_env, "keys", "limits", key.key_id, "--rpm", "none", "--tpm", "100000")
        assert human.returncode == 0
        assert human.stdout.strip() == f"{key.key_id}: unlimited requests/min, 100000 tokens/min"
        assert (await _request(http, key.secret, model_name)).status_code == 200
    _failure(await _acli(base_env, "keys", "limits", "key_missing", "--rpm", "5", "--json"), "not_found")


def test_money_commands(database_url):
    env = _db(database_url)
    tenant = _json(_cli(env, "tenants", "create", "Money Inc", "--json"))
    model = f"cli-model-{ids.random_token(6)}"
    import asyncpg
    from lorafleet.db import queries

    async def add_model() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute(queries.upsert_base_model, ids.base_model_id(), model, 2048, "{}", 16, "generate")  # raw connection: jsonb as text
        finally:
            await connection.close()

    asyncio.run(add_model())
    price = _json(_cli(env, "prices", "set", model, "--prompt", "$0.15", "--completion", "600000",
                       "--adapter-surcharge", "10", "--cached-prompt", "$0.075", "--effective-at", "2026-01-01", "--json"))
    assert (price["prompt_micro_usd_per_mtok"], price["completion_micro_usd_per_mtok"]) == (150000, 600000)
    assert price["cached_prompt_micro_usd_per_mtok"] == 75000
    above = _cli(env, "prices", "set", model, "--prompt", "1", "--completion", "1", "--cached-prompt", "2", "--json")
    assert _failure(above, "invalid_request")["param"] == "cached_prompt_micro_usd_per_mtok"
    assert price["adapter_surcharge_micro_usd_per_mtok"] == 10 and price["base_model"] == model
    assert price["effective_at"].startswith("2026-01-01T00:00:00")
    listed = _json(_cli(env, "prices", "list", "--json"))
    assert [p for p in listed["data"] if p["id"] == price["id"]] == [price]
    human = _cli(env, "prices", "list")
    assert any(line.split()[:2] == [str(price["id"]), model] for line in human.stdout.splitlines())
    duplicate = _cli(env, "prices", "set", model, "--prompt", "1", "--completion", "1", "--effective-at", "2026-01-01",
                     "--json")
    assert _failure(duplicate, "invalid_request")["param"] == "effective_at"
    unknown = _failure(_cli(env, "prices", "set", "no-such-model", "--prompt", "1", "--completion", "1", "--json"),
                       "not_found")
    assert unknown["param"] == "base_model"

    grant = _json(_cli(env, "credits", "grant", "--tenant", tenant["id"], "--amount", "$2.50", "--reason", "welcome",
                       "--json"))
    assert (grant["amount_micro_usd"], grant["reason"], grant["tenant_id"]) == (2_500_000, "welcome", tenant["id"])
    taken = _cli(env, "credits", "grant", "--tenant", tenant["id"], "--amount", "-500000")
    assert taken.returncode == 0 and taken.stdout.startswith(f"granted -$0.500000 to {tenant['id']}")
    balance = _json(_cli(env, "tenants", "limits", "--tenant", tenant["id"], "--mode", "prepaid",
                         "--monthly-spend-limit", "9000000", "--max-concurrent", "3", "--json"))
    assert (balance["billing_mode"], balance["monthly_spend_limit_micro_usd"], balance["max_concurrent_requests"],
            balance["credit_remaining_micro_usd"]) == ("prepaid", 9_000_000, 3, 2_000_000)
    in_dollars = _json(_cli(env, "tenants", "limits", "--tenant", tenant["id"], "--monthly-spend-limit", "9.000001usd",
                            "--json"))
    assert in_dollars["monthly_spend_limit_micro_usd"] == 9_000_001 and in_dollars["max_concurrent_requests"] == 3
    cleared = _json(_cli(env, "tenants", "limits", "--tenant", tenant["id"], "--monthly-spend-limit", "none",
                         "--max-concurrent", "none", "--json"))
    assert cleared["monthly_spend_limit_micro_usd"] is None and cleared["max_concurrent_requests"] is None

    async def account() -> asyncpg.Record:
        connection = await asyncpg.connect(database_url)
        try:
            return await connection.fetchrow("SELECT * FROM tenant_accounts WHERE tenant_id = $1", tenant["id"])
        finally:
            await connection.close()

    stored = asyncio.run(account())
    assert (stored["billing_mode"], stored["monthly_spend_limit_micro_usd"], stored["max_concurrent_requests"],
            stored["credit_granted_micro_usd"]) == ("prepaid", None, None, 2_000_000)
    human = _cli(env, "tenants", "limits", "--tenant", tenant["id"], "--mode", "postpaid")
    assert human.returncode == 0 and human.stdout.strip() == (
        f"{tenant['id']}: postpaid, limit none, max concurrent none, spent this period $0.000000")
    _failure(_cli(env, "credits", "grant", "--tenant", "ten_missing", "--amount", "5", "--json"), "not_found")
    _failure(_cli(env, "tenants", "limits", "--tenant", "ten_missing", "--mode", "prepaid", "--json"), "not_found")


# Every command that opens the database, with arguments that would otherwise be valid.
DATABASE_COMMANDS = [
    ["tenants", "create", "x"], ["tenants", "list"], ["tenants", "limits", "--tenant", "ten_a", "--mode", "prepaid"],
    ["keys", "create", "--tenant", "ten_a"], ["keys", "list", "--tenant", "ten_a"], ["keys", "revoke", "key_a"],
    ["keys", "limits", "key_a", "--rpm", "5"], ["prices", "set", "m", "--prompt", "1", "--completion", "1"],
    ["prices", "list"], ["credits", "grant", "--tenant", "ten_a", "--amount", "5"],
    ["billing", "close-period", "--month", "2020-01"], ["billing", "rebuild-rollups"], ["billing", "export-stripe"],
    ["workers", "list"], ["dashboard", "link", "--tenant", "ten_a"], ["migrate"],
]


def test_database_down_is_one_clear_line(base_env):
    port = free_port()  # nothing listens there: what the CLI sees when PostgreSQL is down
    down = dict(base_env, LORAFLEET_DATABASE_URL=f"postgresql://postgres:s3cret-pw@127.0.0.1:{port}/lorafleet",
                LORAFLEET_STRIPE_API_KEY="sk_test_x")
    for command in DATABASE_COMMANDS:
        error = _failure(_cli(down, *command, "--json"), "database_unavailable")
        assert error["type"] == "server_error" and f"127.0.0.1:{port}/lorafleet" in error["message"], command
        assert "s3cret-pw" not in error["message"]
        human = _cli(down, *command)
        assert human.returncode == 1 and human.stdout == "", command
        assert human.stderr.startswith(f"Error: cannot reach the database at 127.0.0.1:{port}/lorafleet")
        assert len(human.stderr.strip().splitlines()) == 1 and "s3cret-pw" not in human.stderr
    for process in ("gateway", "worker"):  # the long-running ones refuse to start, in one line
        started = _cli(down, process, LORAFLEET_GATEWAY_PORT=str(free_port()), LORAFLEET_WORKER_PORT=str(free_port()))
        assert started.returncode == 1 and "Traceback" not in started.stderr, started.stderr
        lines = started.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: cannot reach the database at 127.0.0.1:{port}/lorafleet: ")


async def test_unconfigured_and_unmigrated_databases(base_env, databases):
    unset = _failure(await _acli(base_env, "tenants", "list", "--json", LORAFLEET_DATABASE_URL=""), "not_configured")
    assert "LORAFLEET_DATABASE_URL" in unset["message"]
    garbled = _failure(await _acli(base_env, "tenants", "list", "--json", LORAFLEET_DATABASE_URL="postgresql://h:x/db"),
                       "not_configured")
    assert "not a usable PostgreSQL URL" in garbled["message"]
    empty = await databases.create()  # a database nobody migrated
    error = _failure(await _acli(base_env, "tenants", "list", "--json", LORAFLEET_DATABASE_URL=empty),
                     "database_not_migrated")
    assert "lorafleet migrate" in error["message"]
    missing_db = empty.rsplit("/", 1)[0] + "/no_such_database"
    error = _failure(await _acli(base_env, "keys", "list", "--tenant", "ten_a", "--json",
                                 LORAFLEET_DATABASE_URL=missing_db), "database_unavailable")
    assert 'database "no_such_database" does not exist' in error["message"]
