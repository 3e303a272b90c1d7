"""The API docs work offline and say which credential each route takes.

`/openapi` (the link `make up` prints) is Swagger UI whose files the gateway serves itself; the
OpenAPI document declares the bearer schemes and, on every operation, the one the route demands —
checked against what each route really answers without a credential and with a tenant's key.
"""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "openapi"


class _Assets(HTMLParser):
    """Every URL a page makes the browser load: scripts, stylesheets, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("script", "img") and values.get("src"):
            self.urls.append(values["src"])
        if tag == "link" and values.get("href"):
            self.urls.append(values["href"])


@pytest.mark.parametrize("page", ["/openapi", "/openapi/swagger"])
async def test_the_docs_page_and_every_asset_it_loads_come_from_the_gateway(platform, page):
    async with httpx.AsyncClient(base_url=platform.url) as http:
        html = await http.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        parser = _Assets()
        parser.feed(html.text)
        kinds = {url.rsplit(".", 1)[-1] for url in parser.urls}
        assert {"js", "css", "png"} <= kinds, parser.urls  # the UI's script, preset, styles and icon
        for url in parser.urls:
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc, f"{url} would need another host"
            asset = await http.get(url)
            assert asset.status_code == 200 and len(asset.content) > 100, url
            expected = {"js": "javascript", "css": "text/css", "png": "image/png"}[url.rsplit(".", 1)[-1]]
            assert expected in asset.headers["content-type"], (url, asset.headers["content-type"])
        assert not re.search(r"https?://", html.text.split("spec:", 1)[0]), "an absolute URL in the page's head"


async def _schema(platform) -> dict:
    async with httpx.AsyncClient(base_url=platform.url) as http:
        return (await http.get("/openapi/openapi.json")).json()


async def test_the_document_declares_bearer_schemes(platform):
    schemes = (await _schema(platform))["components"]["securitySchemes"]
    assert {name: (scheme["type"], scheme["scheme"]) for name, scheme in schemes.items()} == {
        "apiKey": ("http", "bearer"), "adminToken": ("http", "bearer"), "metricsToken": ("http", "bearer")}


async def test_each_operation_declares_the_credential_its_route_demands(platform, tenant):
    """Without a credential a route that answers 401 must declare its scheme, and one that serves must
    not demand one; a tenant's key is refused exactly where the admin token is declared."""
    schema = await _schema(platform)
    checked = 0
    async with httpx.AsyncClient(base_url=platform.url) as http:
        for path, item in schema["paths"].items():
            url = re.sub(r"\{[^}]+\}", "x_doesnotexist", path)
            for method, operation in item.items():
                security = operation.get("security") or []
                required = {name for requirement in security for name in requirement}
                optional = {} in security or not security
                anonymous = await http.request(method.upper(), url)
                with_key = await http.request(method.upper(), url, headers=tenant.headers)
                where = f"{method.upper()} {path}"
                if anonymous.status_code == 401:
                    assert required and not optional, f"{where} demands a credential but declares none"
                else:
                    assert optional, f"{where} serves without a credential but declares {security}"
                assert (with_key.status_code == 401) == (required == {"adminToken"}), (where, with_key.status_code)
                assert (required == {"apiKey"}) == path.startswith("/v1/"), where
                checked += 1
    assert checked == sum(len(item) for item in schema["paths"].values()) > 30


async def test_the_docs_ui_renders_every_operation_offline_in_a_browser(platform):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"needs Debian's chromium at {CHROMIUM} (make test installs it)")
        pytest.skip("needs Debian's chromium (make test installs it)")
    from playwright.async_api import async_playwright

    operations = {operation["operationId"] for item in (await _schema(platform))["paths"].values()
                  for operation in item.values()}
    gateway = urlsplit(platform.url).netloc
    elsewhere: list[str] = []

    async def only_the_gateway(route) -> None:
        # As if offline: anything not served by the gateway fails, and is recorded.
        if urlsplit(route.request.url).netloc == gateway:
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.route("**/*", only_the_gateway)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(platform.url + "/openapi")
            await page.wait_for_selector(".opblock", timeout=30_000)
            # Each operation's block is id="operations-<tag>-<operationId>" (one per tag it carries).
            ids = await page.eval_on_selector_all(".opblock", "blocks => blocks.map(block => block.id)")
            title = await page.locator(".info .title").inner_text()
            authorize = await page.locator("button.authorize").count()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "openapi.png"))
        finally:
            await browser.close()
    assert elsewhere == [] and errors == []
    # The operationId is after the last '-' (operationIds have none; a tag may: "Fine-tuning").
    assert {block_id.rsplit("-", 1)[1] for block_id in ids} == operations and len(operations) > 30
    assert "LoraFleet" in title and authorize == 1
