"""What reaches a worker: OpenAI's fields it serves, vLLM's allowlisted extras, the tenant's cache salt — nothing else."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers import last_sent
from tests.inprocess.conftest import STUB_MODEL

CHAT = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def _post(platform, tenant, body: dict, path: str = "/v1/chat/completions") -> httpx.Response:
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        return await http.post(path, json=body)


def _last_received(platform) -> dict:
    return last_sent(platform)


@pytest.mark.parametrize("field", ["priority", "kv_transfer_params", "vllm_xargs", "stream_interval", "chat_template",
                                   "logits_processors", "cache_salt", "request_id", "mm_processor_kwargs",
                                   "use_beam_search", "no_such_field"])
async def test_engine_knobs_and_unknown_fields_are_refused_by_name(platform, tenant, field):
    response = await _post(platform, tenant, {**CHAT, field: 1})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"]
    assert not any(worker.behaviour.received for worker in platform.workers), "nothing reached a worker"


async def test_openai_fields_the_sdk_sends_are_accepted_and_those_the_engine_lacks_are_not_forwarded(platform, tenant):
    async with openai.AsyncOpenAI(base_url=platform.url + "/v1", api_key=tenant.secret, max_retries=0) as sdk:
        reply = await sdk.chat.completions.create(
            model=STUB_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, user="end-user-7",
            store=True, metadata={"team": "a"}, service_tier="auto", parallel_tool_calls=True, seed=3,
            prompt_cache_key="k", safety_identifier="s", reasoning_effort="low")
    assert reply.choices
    sent = _last_received(platform)
    for dropped in ("store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier"):
        assert dropped not in sent, dropped
    assert sent["user"] == "end-user-7" and sent["parallel_tool_calls"] is True and sent["seed"] == 3
    assert sent["reasoning_effort"] == "low"
    assert sent["model"] == STUB_MODEL and sent["max_tokens"] == 4
    assert "temperature" not in sent, "a field the client did not send is not sent upstream either"


async def test_tool_calls_in_the_history_reach_the_engine_as_sent(platform, tenant):
    """A client replaying a tool call sends ``type: "function"``; vLLM requires it, so it is never dropped
    as a default (tools and a named tool choice likewise)."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "done"}]
    response = await _post(platform, tenant, {**CHAT, "messages": history, "tools": [tool],
                                              "tool_choice": {"type": "function", "function": {"name": "f"}}})
    assert response.status_code == 200, response.text
    sent = _last_received(platform)
    assert sent["messages"][1]["tool_calls"] == history[1]["tool_calls"]
    assert sent["tools"] == [tool] and sent["tool_choice"] == {"type": "function", "function": {"name": "f"}}


async def test_vllm_sampling_extras_on_the_allowlist_are_forwarded(platform, tenant):
    extras = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "min_tokens": 1, "ignore_eos": True,
              "stop_token_ids": [2], "structured_outputs": {"choice": ["a", "b"]}, "chat_template_kwargs": {"x": 1}}
    response = await _post(platform, tenant, {**CHAT, **extras})
    assert response.status_code == 200, response.text
    sent = _last_received(platform)
    assert {name: sent[name] for name in extras} == extras


async def test_each_tenant_has_its_own_stable_prefix_cache_salt(platform, tenant, db):
    from lorafleet.tenancy import TenancyService

    from tests.helpers import TenantKey

    service = TenancyService(db)
    other_tenant = await service.create_tenant("salted")
    other_key = await service.create_key(other_tenant.id)
    other = TenantKey(other_tenant.id, other_key.id, other_key.secret)
    salts = []
    for caller in (tenant, tenant, other):
        for worker in platform.workers:  # several stubs: "last" is only meaningful with one body in all
            worker.behaviour.received.clear()
        assert (await _post(platform, caller, CHAT)).status_code == 200
        salts.append(_last_received(platform)["cache_salt"])
    assert salts[0] == salts[1], "stable for one tenant"
    assert salts[0] != salts[2], "another tenant cannot share (or probe) its prefix cache"
    assert tenant.tenant_id not in salts[0] and len(salts[0]) >= 32, "a keyed hash, not the tenant id"


async def test_fan_out_beyond_the_bound_is_refused_before_any_worker(platform, tenant):
    response = await _post(platform, tenant, {"model": STUB_MODEL, "prompt": ["a"] * 100, "n": 16, "max_tokens": 1},
                           "/v1/completions")
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_sequences"
    too_many = await _post(platform, tenant, {"model": STUB_MODEL, "prompt": ["a"] * 200, "max_tokens": 1},
                           "/v1/completions")
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_prompts"
    assert not any(worker.behaviour.received for worker in platform.workers)


async def test_a_tenant_without_billing_limits_is_still_capped_in_sequences(platform, tenant):
    for worker in platform.workers:
        worker.behaviour.delay_seconds = 0.5
    body = {"model": STUB_MODEL, "prompt": ["a"] * 128, "max_tokens": 1}
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        import asyncio

        responses = await asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(3)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 200, 429], statuses  # the default cap is 256 sequences in flight per tenant
    refused = next(response for response in responses if response.status_code == 429)
    assert refused.json()["error"]["code"] == "concurrency_limit_exceeded" and refused.headers["Retry-After"]
