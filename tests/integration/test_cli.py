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
