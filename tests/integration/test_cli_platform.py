"""`lorafleet gateway|worker|migrate|models|settings|workers|adapters|dashboard|billing …` on a real platform.

Long-running commands are started and stopped (their own ports and data dirs); the others' JSON is checked
against the gateway's API, the database and Stripe (localstripe).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lorafleet.adapters.architecture import model_architecture
from lorafleet.billing.stripe_export import make_client
from lorafleet.core import ids
from lorafleet.devtools.services import free_port, start_gateway

from tests.adapter_factory import write_adapter
from tests.conftest import REPO_ROOT
from tests.helpers import admin, expected_cost, half_up

pytestmark = pytest.mark.engine


def _env(base: dict[str, str], **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env.update(base)
    env["LORAFLEET_DATA_DIR"] = tempfile.mkdtemp()  # no `lorafleet up` state to fall back on
    env.update(overrides)
    return env


def _cli(base: dict[str, str], *args: str, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorafleet.cli.main", *args], env=_env(base, **overrides),
                          capture_output=True, text=True, timeout=600)


async def _acli(base: dict[str, str], *args: str, **overrides: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(_cli, base, *args, **overrides)


def _json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def _failure(result: subprocess.CompletedProcess, code: str, exit_code: int = 1) -> dict:
    assert result.returncode == exit_code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    error = json.loads(result.stdout)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    return error


# ---- the long-running commands -------------------------------------------------------------------

async def test_gateway_command_serves_and_stops_cleanly(worker, base_env, log_dir, db):
    before = {row["id"] for row in await db.fetch("SELECT id FROM gateways")}
    service = await asyncio.to_thread(start_gateway, base_env, log_dir)  # `python -m lorafleet.cli.main gateway`
    try:
        assert service.process.args[-1] == "gateway"
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
            assert (await http.get("/readyz?workers=1")).status_code == 200
            assert (await http.get("/v1/models")).status_code == 401  # serving the API, keys checked
        mine = {row["id"] for row in await db.fetch("SELECT id FROM gateways")} - before
        assert len(mine) == 1, "the gateway registered itself"
    finally:
        code = await asyncio.to_thread(service.stop)
    # A graceful shutdown to the end; uvicorn then re-raises the SIGTERM it got, so the exit status says so.
    assert code in (0, -signal.SIGTERM), service.log_text()[-3000:]
    assert "Application shutdown complete." in service.log_text() and "Traceback" not in service.log_text()
    assert not mine & {row["id"] for row in await db.fetch("SELECT id FROM gateways")}, "deregistered on stop"


async def test_worker_command_serves_and_registers(worker, base_env, db, model_name):
    # The session's worker is `python -m lorafleet.cli.main worker` (devtools.services.start_worker).
    assert worker.process.args[-1] == "worker" and worker.process.poll() is None
    async with httpx.AsyncClient(base_url=worker.url, timeout=30) as http:
        assert (await http.get("/health", headers=worker.internal_headers)).status_code == 200
        served = (await http.get("/v1/models", headers=worker.internal_headers)).json()
    assert model_name in {m["id"] for m in served["data"]}
    registered = await db.fetchrow("SELECT w.state, m.name FROM workers w JOIN base_models m ON m.id = w.base_model_id "
                                   "WHERE w.url = $1", worker.url)
    assert (registered["name"], registered["state"]) == (model_name, "ready")

    # Misconfigured, it refuses to start in one line instead of failing later.
    no_token = await _acli(base_env, "worker", LORAFLEET_INTERNAL_TOKEN="", LORAFLEET_WORKER_PORT=str(free_port()))
    assert no_token.returncode == 1 and no_token.stderr.strip() == (
        "Error: Set LORAFLEET_INTERNAL_TOKEN (the gateway uses it to reach the worker).")
    missing = Path(tempfile.mkdtemp()) / "no-model"
    no_model = await _acli(base_env, "worker", LORAFLEET_MODEL_PATH=str(missing), LORAFLEET_WORKER_PORT=str(free_port()))
    assert no_model.returncode == 1 and no_model.stderr.strip() == (
        f"Error: No model at {missing}; run `lorafleet models prepare`.")


# ---- one-shot commands without the gateway ----------------------------------------------------------

async def test_migrate_builds_a_fresh_database(base_env, databases):
    fresh = await databases.create()
    expected = [path.name.split("_", 1)[0] for path in sorted((REPO_ROOT / "migrations").glob("*.sql"))]
    assert _json(await _acli(base_env, "migrate", "--json", LORAFLEET_DATABASE_URL=fresh)) == {"applied": expected}
    again = await _acli(base_env, "migrate", LORAFLEET_DATABASE_URL=fresh)
    assert again.returncode == 0 and again.stdout.strip() == "applied 0 migration(s)"
    tenant = _json(await _acli(base_env, "tenants", "create", "on a fresh database", "--json",
                               LORAFLEET_DATABASE_URL=fresh))
    listed = _json(await _acli(base_env, "tenants", "list", "--json", LORAFLEET_DATABASE_URL=fresh))
    assert [t["id"] for t in listed["data"]] == [tenant["id"]]


def test_settings_prints_every_setting():
    from lorafleet.core.settings import documented_settings, settings_markdown

    listed = _cli({}, "settings")
    assert listed.returncode == 0
    names = [line.split("=", 1)[0] for line in listed.stdout.splitlines()]
    assert names == [name for _, name, _, _ in documented_settings()]
    table = _cli({}, "settings", "--markdown")
    assert table.returncode == 0 and table.stdout.strip() == settings_markdown()
    assert settings_markdown() in (REPO_ROOT / "README.md").read_text()


def test_models_prepare_builds_the_model_offline(model_path, tmp_path):
    again = _cli({}, "models", "prepare", LORAFLEET_MODEL_PATH=str(model_path))
    assert again.returncode == 0 and f"model already prepared at {model_path}" in again.stderr

    # From scratch, from the GGUF file the first preparation downloaded (no network: it is already there).
    gguf = next((model_path.parent / ".downloads").glob("*.gguf"))
    target = tmp_path / "models" / model_path.name
    (target.parent / ".downloads").mkdir(parents=True)
    os.symlink(gguf, target.parent / ".downloads" / gguf.name)
    built = _cli({}, "models", "prepare", LORAFLEET_MODEL_PATH=str(target))
    assert built.returncode == 0, built.stderr
    assert "wheel already downloaded" in built.stderr and f"model ready at {target}" in built.stderr
    def config(folder: Path) -> dict:
        return {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k != "_name_or_path"}

    assert config(target) == config(model_path)
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in model_path.iterdir())
    assert (target / "model.safetensors").stat().st_size == (model_path / "model.safetensors").stat().st_size


# ---- the fleet, adapters and the dashboard through the gateway -------------------------------------

async def test_workers_list(gateway, worker, base_env, model_name):
    listing = _json(await _acli(base_env, "workers", "list", "--json"))
    assert listing["object"] == "list"
    mine = [w for w in listing["data"] if w["url"] == worker.url]
    assert len(mine) == 1
    assert (mine[0]["base_model"], mine[0]["state"], mine[0]["ready"]) == (model_name, "ready", True)
    assert mine[0]["max_loras"] >= 1 and set(mine[0]["adapters"]) == {"slots", "cpu", "disk", "pinned"}
    async with admin(gateway, base_env) as api:  # the gateway's own view of the same fleet
        fleet = (await api.get("/admin/workers")).json()
    assert {(w["id"], w["url"], w["base_model"]) for w in fleet["data"]} == \
           {(w["id"], w["url"], w["base_model"]) for w in listing["data"]}

    human = await _acli(base_env, "workers", "list")
    assert human.returncode == 0
    line = next(line for line in human.stdout.splitlines() if line.endswith(worker.url))
    assert model_name in line and " ready " in line


async def test_adapter_commands(gateway, base_env, make_key, model_path, model_name, tmp_path):
    key = await make_key()
    client = dict(base_env, LORAFLEET_BASE_URL=gateway.url, LORAFLEET_API_KEY=key.secret)
    folder = write_adapter(tmp_path / "cli-adapter", arch=model_architecture(model_path), rank=8, seed=11)
    uploaded = _json(await _acli(client, "adapters", "upload", str(folder), "--name", "cli-folder",
                                 "--base-model", model_name, "--json"))
    archive = tmp_path / "cli-adapter.tar.gz"
    with tarfile.open(archive, "w:gz") as bundle:
        bundle.add(folder, arcname="my-adapter")
    human = await _acli(client, "adapters", "upload", str(archive), "--name", "cli-archive", "--base-model", model_name)
    assert human.returncode == 0 and human.stdout.startswith("uploaded adp_") and "'cli-archive' (rank 8," in human.stdout

    async with httpx.AsyncClient(base_url=gateway.url, headers=key.headers, timeout=30) as http:
        shown = (await http.get(f"/v1/adapters/{uploaded['id']}")).json()
        assert shown == uploaded
        api_listing = (await http.get("/v1/adapters", params={"limit": 100})).json()
        listing = _json(await _acli(client, "adapters", "list", "--json"))
        assert listing["data"] == api_listing["data"] and {a["name"] for a in listing["data"]} == {"cli-folder", "cli-archive"}
        archived = next(a for a in listing["data"] if a["name"] == "cli-archive")
        assert archived["sha256"] == uploaded["sha256"], "the same weights, from a folder or an archive"
        names = await _acli(client, "adapters", "list")
        assert sorted(line.split()[1] for line in names.stdout.splitlines()) == ["cli-archive", "cli-folder"]

        # --base-url/--api-key instead of the environment
        deleted = _json(await _acli(base_env, "adapters", "delete", archived["id"], "--json",
                                    "--base-url", gateway.url, "--api-key", key.secret))
        assert (deleted["id"], deleted["status"]) == (archived["id"], "deleted")
        assert (await http.get(f"/v1/adapters/{archived['id']}")).status_code == 404

    gone = _failure(await _acli(client, "adapters", "delete", archived["id"], "--json"), "not_found")
    assert gone["type"] == "invalid_request_error"  # the gateway's own envelope, passed on
    bad = tmp_path / "pickled"
    shutil.copytree(folder, bad)
    (bad / "adapter_model.bin").write_bytes(b"not really a pickle")
    refused = _failure(await _acli(client, "adapters", "upload", str(bad), "--name", "bad", "--base-model", model_name,
                                   "--json"), "invalid_adapter")
    assert "pickle" in refused["message"] and refused["param"] == "adapter_model.bin"
    wrong_key = _failure(await _acli(client, "adapters", "list", "--json", LORAFLEET_API_KEY="sk_live_wrong"),
                         "invalid_api_key")
    assert wrong_key["type"] == "authentication_error"
    down = _failure(await _acli(client, "adapters", "list", "--json", LORAFLEET_BASE_URL=f"http://127.0.0.1:{free_port()}"),
                    "gateway_unavailable")
    assert down["type"] == "server_error" and "cannot reach the gateway" in down["message"]
    unset = _failure(await _acli(base_env, "adapters", "list", "--json"), "not_configured")
    assert unset["param"] == "--base-url"


async def test_adapter_release_commands(gateway, base_env, make_key, model_path, model_name, tmp_path):
    """Versions, an alias set, listed, rolled back and deleted, and the weights downloaded, from the CLI."""
    key = await make_key()
    client = dict(base_env, LORAFLEET_BASE_URL=gateway.url, LORAFLEET_API_KEY=key.secret)
    folders = [write_adapter(tmp_path / f"release-{seed}", arch=model_architecture(model_path), rank=8, seed=seed)
               for seed in (21, 22)]
    versions = [_json(await _acli(client, "adapters", "upload", str(folder), "--name", "release", "--base-model",
                                  model_name, "--json"))["version"] for folder in folders]
    assert versions == [1, 2]
    moved = _json(await _acli(client, "adapters", "alias", "set", "release", "prod", "1:90", "2:10", "--json"))
    assert [(t["version"], t["weight"]) for t in moved["targets"]] == [(1, 90), (2, 10)]
    assert _json(await _acli(client, "adapters", "alias", "set", "release", "prod", "2", "--json"))["targets"][0]["version"] == 2
    listed = await _acli(client, "adapters", "alias", "list", "release")
    assert listed.returncode == 0 and "release@prod" in listed.stdout and "v2" in listed.stdout, listed.stdout
    rolled = await _acli(client, "adapters", "alias", "rollback", "release", "prod")
    assert rolled.returncode == 0 and "v1 (90), v2 (10)" in rolled.stdout, rolled.stdout
    bad = _failure(await _acli(client, "adapters", "alias", "set", "release", "prod", "7", "--json"), "version_not_found")
    assert bad["param"] == "versions[0].version"
    deleted = await _acli(client, "adapters", "alias", "delete", "release", "prod")
    assert deleted.returncode == 0 and "release@prod" in deleted.stdout
    assert _json(await _acli(client, "adapters", "alias", "list", "release", "--json"))["data"] == []
    target = tmp_path / "out.tar"
    fetched = await _acli(client, "adapters", "download", "release@v1", "--output", str(target))
    assert fetched.returncode == 0, fetched.stderr
    with tarfile.open(target) as tar:
        weights = tar.extractfile("release-v1/adapter_model.safetensors").read()
    assert weights == (folders[0] / "adapter_model.safetensors").read_bytes()
    assert hashlib.sha256(target.read_bytes()).hexdigest() in fetched.stdout
    _failure(await _acli(client, "adapters", "download", "release@v9", "--json"), "not_found")


async def test_dashboard_link_signs_in_once(gateway, base_env, make_key):
    key = await make_key()
    link = _json(await _acli(base_env, "dashboard", "link", "--tenant", key.tenant_id, "--json",
                             LORAFLEET_BASE_URL=gateway.url))
    assert link["url"].startswith(f"{gateway.url}/dashboard/login/") and link["expires_in_seconds"] == 900
    port = gateway.url.rsplit(":", 1)[1]
    # Without a base URL the link is the gateway's address; a wildcard bind is reached on the loopback.
    plain = await _acli(base_env, "dashboard", "link", "--tenant", key.tenant_id, LORAFLEET_GATEWAY_HOST="0.0.0.0",
                        LORAFLEET_GATEWAY_PORT=port)
    assert plain.returncode == 0 and plain.stdout.startswith(f"http://127.0.0.1:{port}/dashboard/login/")
    async with httpx.AsyncClient(timeout=30, follow_redirects=False) as http:
        for url in (link["url"], plain.stdout.strip()):
            signed = await http.get(url)
            assert signed.status_code == 303 and signed.headers["location"] == "/dashboard"
            page = await http.get(f"{gateway.url}/dashboard", cookies=signed.cookies)
            assert page.status_code == 200
            assert (await http.get(url)).status_code == 401, "a link signs in once"
    _failure(await _acli(base_env, "dashboard", "link", "--tenant", "ten_missing", "--json"), "not_found")


# ---- billing jobs --------------------------------------------------------------------------------

@pytest.fixture
def localstripe(tmp_path) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path / "localstripe.log", "wb")  # noqa: SIM115 - the child writes it
    process = subprocess.Popen([sys.executable, "-m", "tests.localstripe_server", "--port", str(port), "--from-scratch"],
                               stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "localstripe did not start"
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)
    log.close()


async def _last_month_rows(db, key, base_env) -> tuple[str, int]:
    """Three priced ledger rows in the previous month, through the ledger's own writer; (month, their total)."""
    from lorafleet.billing.ledger_row import LedgerRow
    from lorafleet.db import queries
    from lorafleet.gateway.metering.writer import LedgerWriter

    model = f"cli-billing-{ids.random_token(6)}"
    model_id = (await db.fetchrow(queries.upsert_base_model, ids.base_model_id(), model, 2048, {}, 16, "generate"))["id"]
    price = _json(await _acli(base_env, "prices", "set", model, "--prompt", "1000003", "--completion", "2000001",
                              "--effective-at", "2020-01-01", "--json"))
    first_of_month = dt.datetime.now(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    started = (first_of_month - dt.timedelta(days=1)).replace(day=2, hour=12)
    writer = LedgerWriter(db)
    writer.start()
    total = 0
    for prompt, completion in ((7, 11), (13, 17), (100, 3)):
        cost = expected_cost(prompt, completion, 1_000_003, 2_000_001)
        total += cost
        writer.record(LedgerRow(
            request_id=ids.request_id(), tenant_id=key.tenant_id, api_key_id=key.key_id, base_model_id=model_id,
            model=model, endpoint="completions", outcome="success", http_status=200, streamed=False,
            prompt_tokens=prompt, completion_tokens=completion, worker_url=None, started_at=started,
            finished_at=started, ttft_ms=1, duration_ms=2, cost_pico_usd=cost, price_id=price["id"]))
    await writer.drain()
    await writer.close()
    return f"{started:%Y-%m}", total


async def test_billing_jobs(gateway, base_env, db, make_key, localstripe):
    key = await make_key()
    month, total = await _last_month_rows(db, key, base_env)

    closed = _json(await _acli(base_env, "billing", "close-period", "--tenant", key.tenant_id, "--json"))
    assert closed["month"] == month and len(closed["invoices"]) == 1  # the default month: the previous one
    invoice_id = closed["invoices"][0]
    async with httpx.AsyncClient(base_url=gateway.url, headers=key.headers, timeout=30) as http:
        invoice = (await http.get(f"/v1/invoices/{invoice_id}")).json()
    assert invoice["total_micro_usd"] == half_up(total) and invoice["period_start"] == f"{month}-01"
    rerun = await _acli(base_env, "billing", "close-period", "--month", month, "--tenant", key.tenant_id)
    assert rerun.returncode == 0 and rerun.stdout.strip() == f"closed {month}: 0 new invoice(s)"
    _failure(await _acli(base_env, "billing", "close-period", "--tenant", "ten_missing", "--json"), "not_found")
    this_month = f"{dt.datetime.now(dt.UTC):%Y-%m}"
    early = _failure(await _acli(base_env, "billing", "close-period", "--month", this_month, "--json"), "invalid_request")
    assert "has not ended" in early["message"] and early["param"] == "month"

    counts = _json(await _acli(base_env, "billing", "rebuild-rollups", "--json"))
    assert counts == {"hourly_rows": await db.fetchval("SELECT count(*) FROM usage_hourly"),
                      "daily_rows": await db.fetchval("SELECT count(*) FROM usage_daily")}
    assert await db.fetchval("SELECT sum(cost_pico_usd) FROM usage_daily WHERE tenant_id = $1", key.tenant_id) == total

    stripe_env = dict(base_env, LORAFLEET_STRIPE_API_KEY="sk_test_lorafleet")
    off = _failure(await _acli(base_env, "billing", "export-stripe", "--json"), "not_configured")
    assert "LORAFLEET_STRIPE_API_KEY" in off["message"]
    unreachable = _failure(await _acli(stripe_env, "billing", "export-stripe", "--json",
                                       LORAFLEET_STRIPE_API_BASE=f"http://127.0.0.1:{free_port()}"), "stripe_unavailable")
    assert "cannot reach Stripe" in unreachable["message"]
    assert await db.fetchval("SELECT stripe_invoice_id FROM invoices WHERE id = $1", invoice_id) is None

    exported = _json(await _acli(stripe_env, "billing", "export-stripe", "--json", LORAFLEET_STRIPE_API_BASE=localstripe))
    assert invoice_id in exported["exported"]
    stripe_invoice = await db.fetchval("SELECT stripe_invoice_id FROM invoices WHERE id = $1", invoice_id)
    remote = make_client("sk_test_lorafleet", localstripe).v1.invoices.retrieve(stripe_invoice)
    assert remote.metadata["lorafleet_invoice_id"] == invoice_id and remote.metadata["total_micro_usd"] == str(half_up(total))
    again = await _acli(stripe_env, "billing", "export-stripe", LORAFLEET_STRIPE_API_BASE=localstripe)
    assert again.returncode == 0 and again.stdout.strip() == "exported 0 invoice(s)"
