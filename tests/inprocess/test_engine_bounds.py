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
