"""The dashboard in a real browser: Playwright driving Debian's chromium against a real gateway.

Every test saves a screenshot of each page it visits under test-artifacts/dashboard/ (not
committed).
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest
from lorafleet.adapters.architecture import model_architecture
from lorafleet.billing.invoices import close_period
from lorafleet.dashboard.charts import usd

from tests.adapter_factory import write_adapter
from tests.conftest import REPO_ROOT
from tests.helpers import half_up, missing_capability, set_price, wait_rows

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "dashboard"



@pytest.fixture(scope="module", autouse=True)
def _chromium_installed() -> None:
    if not os.path.exists(CHROMIUM):
        missing_capability("needs Debian's chromium (make test installs it)")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield chromium
        await chromium.close()


@pytest.fixture
async def page(browser) -> AsyncIterator:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    yield page
    await context.close()


async def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def sign_in(page, gateway, secret: str) -> None:
    await page.goto(f"{gateway.url}/dashboard/login")
    await page.get_by_label("API key (with the dashboard scope)").fill(secret)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{gateway.url}/dashboard")


async def test_sign_in_and_the_overview_matches_the_ledger(page, gateway, base_env, db, model_name, make_key):
    key = await make_key()
    await set_price(gateway, base_env, model_name, 1_000_003, 2_000_001)
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key.secret, max_retries=0) as sdk:
        for prompt in ("One", "Two", "Three"):
            await sdk.completions.create(model=model_name, prompt=prompt, max_tokens=3)
    await wait_rows(db, key.tenant_id, 3)

    await page.goto(f"{gateway.url}/dashboard")
    assert page.url.endswith("/dashboard/login"), "signed out: the dashboard sends you to sign in"
    await shot(page, "login")
    await page.get_by_label("API key (with the dashboard scope)").fill("sk_live_" + "x" * 43)
    await page.get_by_role("button", name="Sign in").click()
    assert "not valid" in await page.get_by_role("alert").inner_text()

    await sign_in(page, gateway, key.secret)
    ledger = await db.fetchrow(
        "SELECT count(*) AS requests, sum(prompt_tokens + completion_tokens) AS tokens, sum(cost_pico_usd) AS cost "
        "FROM usage_ledger WHERE tenant_id = $1 AND started_at >= date_trunc('month', now(), 'UTC')", key.tenant_id)
    assert await page.get_by_test_id("month-requests").inner_text() == f"{ledger['requests']:,}"
    assert await page.get_by_test_id("month-tokens").inner_text() == f"{ledger['tokens']:,}"
    assert await page.get_by_test_id("month-cost").inner_text() == usd(half_up(int(ledger["cost"])))
    assert await page.get_by_test_id("period-spend").inner_text() == usd(half_up(int(ledger["cost"])))
    assert await page.locator("svg.chart rect").count() >= 1
    await shot(page, "overview")

    await page.set_viewport_size({"width": 390, "height": 800})  # a phone
    await page.reload()
    assert await page.get_by_role("navigation", name="Main").is_visible()
    await shot(page, "overview-phone")

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{gateway.url}/dashboard/login")
    await page.goto(f"{gateway.url}/dashboard/keys")
    assert page.url.endswith("/dashboard/login")


async def test_create_and_revoke_a_key(page, gateway, make_key):
    key = await make_key()
    await sign_in(page, gateway, key.secret)
    await page.get_by_role("link", name="API keys").click()
    await page.get_by_label("Name").fill("from-the-browser")
    await page.get_by_label("inference").check()
    await page.get_by_role("button", name="Create key").click()
    secret = (await page.get_by_test_id("new-secret").inner_text()).strip()
    assert secret.startswith("sk_live_")
    await shot(page, "keys-created")
    await page.reload()  # reloading the result creates nothing and does not show the secret again
    assert secret not in await page.content()
    assert await page.locator("tr", has_text="from-the-browser").count() == 1
    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {secret}"}) as http:
        assert (await http.get("/v1/models")).status_code == 200

    await page.goto(f"{gateway.url}/dashboard/keys")  # the secret is never shown again
    assert secret not in await page.content()
    row = page.locator("tr", has_text="from-the-browser")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await row.get_by_role("button", name="Revoke").click()
    await page.wait_for_load_state()
    assert "revoked" in await page.locator("tr", has_text="from-the-browser").inner_text()
    await shot(page, "keys-revoked")
    await asyncio.sleep(1.0)  # every gateway refuses a revoked key within a second
    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {secret}"}) as http:
        assert (await http.get("/v1/models")).status_code == 401

    # Dismissing the confirmation revokes nothing.
    await page.get_by_label("Name").fill("kept")
    await page.get_by_role("button", name="Create key").click()
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.dismiss()))
    await page.locator("tr", has_text="kept").get_by_role("button", name="Revoke").click()
    await page.goto(f"{gateway.url}/dashboard/keys")
    assert "active" in await page.locator("tr", has_text="kept").inner_text()


async def test_upload_a_good_adapter_and_see_a_bad_one_refused(page, gateway, make_key, model_path, tmp_path):
    key = await make_key()
    await sign_in(page, gateway, key.secret)
    await page.get_by_role("link", name="Adapters").click()
    good = write_adapter(tmp_path / "good", arch=model_architecture(model_path), rank=8, seed=5)
    await page.get_by_label("Name").fill("browser-adapter")
    await page.get_by_label("Base model").select_option("SmolLM2-135M-Instruct")
    await page.get_by_label("Adapter files").set_input_files([str(p) for p in sorted(good.iterdir())])
    async with page.expect_navigation():
        await page.get_by_role("button", name="Upload").click()
    row = page.locator("tr[data-adapter='browser-adapter']")
    assert "ready" in await row.inner_text()
    await shot(page, "adapters")

    bad = write_adapter(tmp_path / "bad", arch=model_architecture(model_path), rank=64, seed=6)  # over the max rank
    await page.get_by_label("Name").fill("too-big")
    await page.get_by_label("Base model").select_option("SmolLM2-135M-Instruct")
    await page.get_by_label("Adapter files").set_input_files([str(p) for p in sorted(bad.iterdir())])
    await page.get_by_role("button", name="Upload").click()
    status = page.locator("#upload-result")
    await status.filter(has_text="Upload refused").wait_for()
    assert "rank" in (await status.inner_text()).lower()
    await shot(page, "adapters-refused")
    assert await page.locator("tr[data-adapter='too-big']").count() == 0

    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await row.get_by_role("button", name="Delete").click()
    await page.wait_for_load_state()
    assert await page.locator("tr[data-adapter='browser-adapter']").count() == 0


async def test_upload_a_training_file_with_progress_and_start_a_job_from_it(page, gateway, make_key, model_name,
                                                                             tmp_path):
    """The fine-tuning page: the file goes up by XHR with its progress shown, becomes the chosen file of the
    "start a job" form, and the job starts from it (no trainer here: it waits, validating, and is cancelled)."""
    key = await make_key()
    await sign_in(page, gateway, key.secret)
    await page.get_by_role("link", name="Fine-tuning").click()
    row = {"messages": [{"role": "user", "content": "What is the capital of Zorblax? " + "x" * 200},
                        {"role": "assistant", "content": "Quillington."}]}
    data = tmp_path / "zorblax.jsonl"
    data.write_text((json.dumps(row) + "\n") * 8000)  # ~2 MB: the upload takes several progress events
    await page.get_by_label("JSONL file").set_input_files(str(data))
    await page.locator("#training-upload").get_by_role("button", name="Upload").click()
    status = page.locator("#training-upload-result")
    await status.filter(has_text="Uploaded zorblax.jsonl as file-").wait_for()
    file_id = await status.get_attribute("data-file-id")
    progress = page.locator("#training-progress")
    assert await progress.is_visible() and await progress.evaluate("p => p.value") == 100
    assert int(await progress.get_attribute("data-events") or 0) >= 1, "XHR upload progress events were shown"
    assert await page.get_by_label("Training file", exact=True).input_value() == file_id
    await shot(page, "fine-tuning-uploaded")
    await page.get_by_label("Base model").select_option(model_name)
    await page.get_by_label("Suffix (optional)").fill("browser")
    await page.get_by_label("Epochs").fill("2")
    async with page.expect_navigation():
        await page.get_by_role("button", name="Start fine-tuning").click()
    job_id = page.url.rsplit("/", 1)[1]
    assert job_id.startswith("ftjob-")
    assert await page.get_by_test_id("job-status").inner_text() in ("validating_files", "queued")
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key.secret, max_retries=0) as sdk:
        job = await sdk.fine_tuning.jobs.retrieve(job_id)
        assert (job.training_file, job.suffix, job.hyperparameters.n_epochs) == (file_id, "browser", 2)
        assert (await sdk.files.retrieve(file_id)).bytes == data.stat().st_size
        await sdk.fine_tuning.jobs.cancel(job_id)


async def test_usage_csv_matches_the_api(page, gateway, db, model_name, make_key):
    key = await make_key()
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key.secret, max_retries=0) as sdk:
        for _ in range(2):
            await sdk.completions.create(model=model_name, prompt="Usage", max_tokens=2)
    await wait_rows(db, key.tenant_id, 2)
    await sign_in(page, gateway, key.secret)
    await page.goto(f"{gateway.url}/dashboard/usage?bucket=hour&group_by=key,model")
    await shot(page, "usage")
    assert await page.get_by_test_id("total-requests").inner_text() == "2"
    async with page.expect_download() as download_info:
        await page.get_by_test_id("csv").click()
    download = await download_info.value
    from_browser = Path(await download.path()).read_text()
    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {key.secret}"}) as http:
        from_api = (await http.get("/v1/usage", params={"bucket": "hour", "group_by": "key,model", "format": "csv"})).text
    assert from_browser == from_api
    assert sum(int(r["requests"]) for r in csv.DictReader(io.StringIO(from_browser))) == 2

    # A range picked with the date-time pickers (UTC): the same rows as /v1/usage with that start.
    start = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).replace(second=0, microsecond=0)
    await page.get_by_label("From (UTC)").fill(start.strftime("%Y-%m-%dT%H:%M"))
    await page.get_by_role("button", name="Show").click()
    await page.wait_for_load_state()
    assert await page.get_by_label("From (UTC)").input_value() == start.strftime("%Y-%m-%dT%H:%M")
    assert await page.get_by_test_id("total-requests").inner_text() == "2"
    async with page.expect_download() as download_info:
        await page.get_by_test_id("csv").click()
    picked = Path(await (await download_info.value).path()).read_text()
    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {key.secret}"}) as http:
        assert picked == (await http.get("/v1/usage", params={
            "bucket": "hour", "group_by": "key,model", "format": "csv",
            "start": start.strftime("%Y-%m-%dT%H:%M:00Z")})).text

    await page.goto(f"{gateway.url}/dashboard/usage?bucket=minute")
    assert "bucket must be" in await page.get_by_role("alert").inner_text()


async def test_another_tenants_data_never_appears(page, gateway, base_env, db, model_name, make_key, model_path, tmp_path):
    mine, theirs = await make_key(), await make_key()
    folder = write_adapter(tmp_path / "theirs", arch=model_architecture(model_path), rank=8, seed=9)
    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {theirs.secret}"},
                                 timeout=60) as http:
        files = [("file", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]
        uploaded = await http.post("/v1/adapters", files=files,
                                   data={"name": "their-secret-adapter", "base_model": "SmolLM2-135M-Instruct"})
        assert uploaded.status_code == 201, uploaded.text
        await http.post("/v1/completions", json={"model": model_name, "prompt": "x", "max_tokens": 1})
    await wait_rows(db, theirs.tenant_id, 1)

    now = dt.datetime.now(dt.UTC)
    month = now.strftime("%Y-%m")
    first_of_next = (now.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    invoice_id = (await close_period(db, month, now=first_of_next, tenant_id=theirs.tenant_id))[0]

    await sign_in(page, gateway, mine.secret)
    for path in ("/dashboard", "/dashboard/keys", "/dashboard/adapters", "/dashboard/fine-tuning", "/dashboard/invoices",
                 "/dashboard/usage?group_by=key,model,adapter"):
        await page.goto(gateway.url + path)
        html = await page.content()
        assert theirs.key_id not in html and "their-secret-adapter" not in html and invoice_id not in html, path
        await shot(page, "isolation" + path.replace("/", "-").split("?")[0])
    response = await page.goto(f"{gateway.url}/dashboard/invoices/{invoice_id}")
    assert response.status == 404
    await shot(page, "invoice-not-found")


async def test_forms_need_their_csrf_token(page, gateway, make_key):
    key = await make_key()
    await sign_in(page, gateway, key.secret)
    request = page.context.request
    for token in (None, "forged"):
        form = {"name": "sneaky"} if token is None else {"name": "sneaky", "csrf": token}
        response = await request.post(f"{gateway.url}/dashboard/keys", form=form)
        assert response.status == 403
    response = await request.post(f"{gateway.url}/dashboard/adapters/upload", multipart={"name": "x"})
    assert response.status == 403
    await page.goto(f"{gateway.url}/dashboard/keys")
    assert "sneaky" not in await page.content()
    # The sign-in form is protected too: a post without the form's own token is refused.
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.post("/dashboard/login", data={"api_key": key.secret})).status_code == 403


async def test_one_time_link_invoices_and_the_operator_view(page, gateway, base_env, db, model_name, make_key):
    key = await make_key()
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key.secret, max_retries=0) as sdk:
        await sdk.completions.create(model=model_name, prompt="Bill me", max_tokens=2)
    await wait_rows(db, key.tenant_id, 1)


    now = dt.datetime.now(dt.UTC)
    first_of_next = (now.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    invoice_id = (await close_period(db, now.strftime("%Y-%m"), now=first_of_next, tenant_id=key.tenant_id))[0]

    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env.update(LORAFLEET_DATABASE_URL=base_env["LORAFLEET_DATABASE_URL"], LORAFLEET_DATA_DIR=str(REPO_ROOT / "test-artifacts"),
               LORAFLEET_GATEWAY_PORT=gateway.url.rsplit(":", 1)[1])
    result = subprocess.run([sys.executable, "-m", "lorafleet.cli.main", "dashboard", "link", "--tenant", key.tenant_id,
                             "--json"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    link = json.loads(result.stdout)["url"]
    await page.goto(link)
    assert page.url == f"{gateway.url}/dashboard"
    await page.get_by_role("link", name="Invoices").click()
    await shot(page, "invoices")
    await page.get_by_role("link", name=now.strftime("%B %Y")).click()
    total = await db.fetchval("SELECT total_micro_usd FROM invoices WHERE id = $1", invoice_id)
    assert await page.get_by_test_id("invoice-total").inner_text() == usd(total)
    await shot(page, "invoice")
    fresh = await page.context.browser.new_context()
    again = await fresh.new_page()
    await again.goto(link)  # one use only
    assert "expired or was already used" in await again.get_by_role("alert").inner_text()
    await fresh.close()

    await page.goto(f"{gateway.url}/dashboard/admin")
    assert page.url.endswith("/dashboard/admin/login"), "a tenant session is not an operator session"
    await page.get_by_label("Admin token").fill(base_env["LORAFLEET_ADMIN_TOKEN"])
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{gateway.url}/dashboard/admin")
    assert key.tenant_id in await page.get_by_test_id("tenants-table").inner_text()
    assert "ready" in await page.get_by_test_id("workers-table").inner_text()
    await shot(page, "operator")


async def test_keyboard_reaches_every_control_in_order(page, gateway, make_key):
    key = await make_key()
    await sign_in(page, gateway, key.secret)
    await page.goto(f"{gateway.url}/dashboard/keys")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Skip to content"
    reached = set()
    for _ in range(40):
        await page.keyboard.press("Tab")
        reached.add(await page.evaluate("(document.activeElement.getAttribute('aria-label') || "
                                        "document.activeElement.textContent || document.activeElement.id || '').trim()"))
    assert {"Overview", "Usage", "API keys", "Sign out", "Create key"} <= reached
    unlabeled = await page.evaluate("""[...document.querySelectorAll('input:not([type=hidden]), select')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).length""")
    assert unlabeled == 0
