"""A request that sets no output cap gets the model's default (LORAFLEET_DEFAULT_MAX_OUTPUT_TOKENS, at most its
context): forwarded to the worker, counted in its worst case, and shown in ``/v1/models``."""

from __future__ import annotations

import httpx
import pytest
from lorafleet.core.settings import GatewaySettings

from tests.inprocess.conftest import STUB_MODEL

CAP = GatewaySettings().default_max_output_tokens  # the tier runs with the default
STUB_CONTEXT = 4096                         # the stub model's max_model_len (conftest)


def _sent(platform) -> dict:
    (body,) = [body for worker in platform.workers for body in worker.behaviour.received]
    return body


async def _post(platform, tenant, path: str, body: dict) -> httpx.Response:
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        return await http.post(path, json={"model": STUB_MODEL, **body})


CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("path", "body", "sent"), [
    ("/v1/chat/completions", CHAT, {"max_tokens": CAP}),
    ("/v1/chat/completions", {**CHAT, "stream": True}, {"max_tokens": CAP}),
    ("/v1/responses", {"input": "hi"}, {"max_tokens": CAP}),
    ("/v1/completions", {"prompt": "hi"}, {"max_tokens": 16}),   # OpenAI's default for completions, made explicit
    ("/v1/chat/completions", {**CHAT, "max_tokens": 7}, {"max_tokens": 7}),
    ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 9}, {"max_tokens": None, "max_completion_tokens": 9}),
    ("/v1/responses", {"input": "hi", "max_output_tokens": 5}, {"max_tokens": 5}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 3000}, {"max_tokens": 3000}),
])
async def test_the_worker_gets_the_default_cap_only_when_the_client_set_none(platform, tenant, path, body, sent):
    assert CAP < STUB_CONTEXT, "the setting, not the context, is the cap here"
    response = await _post(platform, tenant, path, body)
    assert response.status_code == 200, response.text
    forwarded = _sent(platform)
    assert {name: forwarded.get(name) for name in sent} == sent


async def test_the_worst_case_reserved_uses_the_default_cap(platform, tenant):
    """A key allowed 2,000 tokens a minute: a chat request without a cap fits (prompt bound + 1,024), as it would
    not if the worst case were the model's 4,096-token context; asking for more than the limit is still a 429."""
    async with httpx.AsyncClient(base_url=platform.url, timeout=30) as http:
        limited = await http.patch(f"/admin/keys/{tenant.key_id}", headers=platform.admin_headers,
                                   json={"tokens_per_minute": 2000})
        assert limited.status_code == 200, limited.text
    uncapped = await _post(platform, tenant, "/v1/chat/completions", CHAT)
    assert uncapped.status_code == 200, uncapped.text
    too_much = await _post(platform, tenant, "/v1/chat/completions", {**CHAT, "max_tokens": 3000})
    assert too_much.status_code == 429, too_much.text
    assert too_much.json()["error"]["code"] == "request_too_large_for_rate_limit"


async def test_models_show_their_default_cap(platform, tenant):
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        listed = (await http.get("/v1/models")).json()["data"]
        one = (await http.get(f"/v1/models/{STUB_MODEL}")).json()
    (stub,) = [model for model in listed if model["id"] == STUB_MODEL]
    assert stub["default_max_tokens"] == one["default_max_tokens"] == min(CAP, stub["max_model_len"])
