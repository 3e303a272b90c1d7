"""The API as a generated client sees it: every request body documented, lists paginated, errors in one envelope."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import admin
from tests.inprocess.conftest import STUB_MODEL


async def _schema(platform) -> dict:
    async with httpx.AsyncClient(base_url=platform.url) as http:
        return (await http.get("/openapi/openapi.json")).json()


async def test_every_request_body_is_in_the_openapi_schema(platform):
    schema = await _schema(platform)
    # Actions on the path's object: nothing to send.
    bodyless = {"POST /admin/adapters/{adapter_id}/pin", "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
                "POST /v1/batches/{batch_id}/cancel", "POST /v1/adapters/{adapter_name}/aliases/{alias}/rollback",
                "POST /v1/organization/projects/{project_id}/archive",
                "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/pause",
                "POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/resume",
                "POST /v1/webhook_endpoints/{webhook_endpoint_id}/deliveries/{delivery_id}/replay"}
    missing = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in ("post", "patch", "put") and not operation.get("requestBody"):
                missing.append(f"{method.upper()} {path}")
    assert sorted(missing) == sorted(bodyless), missing
    chat = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert chat["$ref"].endswith("ChatCompletionRequest")
    upload = schema["paths"]["/v1/adapters"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload


async def test_post_routes_that_create_document_idempotency_keys(platform):
    schema = await _schema(platform)
    for path, method in (("/v1/keys", "post"), ("/v1/adapters", "post"), ("/admin/prices", "post"),
                         ("/admin/tenants/{tenant_id}/credits", "post"), ("/admin/tenants", "post")):
        names = {p["name"] for p in schema["paths"][path][method].get("parameters", [])}
        assert "Idempotency-Key" in names, (method, path)


async def test_lists_page_with_a_cursor(platform, tenant, db):
    from lorafleet.tenancy import TenancyService

    service = TenancyService(db)
    for _ in range(4):
        await service.create_key(tenant.tenant_id)
    seen: list[str] = []
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        cursor = None
        while True:
            params = {"limit": 2, **({"starting_after": cursor} if cursor else {})}
            page = (await http.get("/v1/keys", params=params)).json()
            assert page["object"] == "list" and len(page["data"]) <= 2
            seen += [key["id"] for key in page["data"]]
            if not page["has_more"]:
                break
            cursor = page["data"][-1]["id"]
        bad = await http.get("/v1/keys", params={"limit": 0})
    assert len(seen) == len(set(seen)) == 5
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"


async def test_every_kind_of_bad_request_gets_the_openai_envelope(platform, tenant):
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        cases = [
            (await http.get("/v1/no-such-route"), 404),
            (await http.put("/v1/chat/completions", json={}), 405),
            (await http.post("/v1/chat/completions", content=b"{not json"), 400),
            (await http.post("/v1/chat/completions", content=b"[1, 2]"), 400),
            (await http.post("/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": 5}]}), 400),
            (await http.post("/v1/chat/completions", content=b"x" * (5 * 1024 * 1024)), 413),
            (await http.get("/v1/adapters/adp_doesnotexist"), 404),
            (await http.get("/v1/models/no-such-model"), 404),
            (await http.get("/v1/usage", params={"bucket": "minute"}), 400),
        ]
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.status_code, response.text[:200])
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        assert "Traceback" not in response.text


async def test_the_admin_api_refuses_tenant_keys_and_wrong_tokens(platform, tenant):
    async with httpx.AsyncClient(base_url=platform.url) as http:
        for headers in ({}, tenant.headers, {"Authorization": "Bearer not-the-admin-token"}):
            response = await http.get("/admin/tenants", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    async with admin(platform, platform.env) as api:
        assert (await api.get("/admin/tenants", params={"limit": 1})).status_code == 200


@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("POST", "/v1/chat/completions", {"content": b"{not json"}),
    ("POST", "/v1/completions", {"json": {"model": 5}}),
    ("POST", "/v1/keys", {"json": {"scopes": "everything"}}),
    ("POST", "/v1/adapters", {"files": {"file": ("a.tar.gz", b"x")}}),
])
async def test_a_caller_without_a_key_gets_401_whatever_its_body(platform, method, path, kwargs):
    """Credentials are checked before any of the body is read: no decoding (or sandbox) for strangers."""
    async with httpx.AsyncClient(base_url=platform.url) as http:
        response = await http.request(method, path, **kwargs)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "missing_api_key"


async def test_embeddings_on_a_generation_model_name_the_right_route(platform, tenant):
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        answer = await http.post("/v1/embeddings", json={"model": STUB_MODEL, "input": ["x", "y"]})
        bad = await http.post("/v1/embeddings", json={"model": STUB_MODEL, "input": [], "dimensions": -1})
    error = answer.json()["error"]
    assert answer.status_code == 400, answer.text
    assert (error["code"], error["param"]) == ("unsupported_model", "model") and "/v1/chat/completions" in error["message"]
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize("path, head", [
    ("/v1/chat/completions", b'"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", '
                             b'"function": {"name": "f", "parameters": {"p": '),
    ("/v1/responses", b'"input": "x", "tools": [{"type": "function", "name": "f", "parameters": {"p": '),
])
async def test_a_body_nested_too_deeply_where_any_json_is_allowed_is_a_400(platform, tenant, path, head):
    body = b'{"model": "' + STUB_MODEL.encode() + b'", ' + head + _deep(100_000) + b"}}]}"
    async with httpx.AsyncClient(base_url=platform.url, headers={**tenant.headers, "content-type": "application/json"}) as http:
        answer = await http.post(path, content=body)
    assert answer.status_code == 400 and "nested too deeply" in answer.json()["error"]["message"], answer.text


@pytest.mark.parametrize("path, field", [("/v1/completions", "prompt"), ("/v1/embeddings", "input")])
async def test_negative_token_ids_are_refused_before_any_worker(platform, tenant, path, field):
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        answer = await http.post(path, json={"model": STUB_MODEL, field: [[1, -5]]})
    assert answer.status_code == 400 and answer.json()["error"]["param"].startswith(field), answer.text
