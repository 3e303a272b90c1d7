"""The rest of the OpenAI surface with the official SDK against real vLLM workers: the Responses API and
tool calling, on the base model and through an adapter, and embeddings from a worker in pooling mode.
Every route's usage equals its ledger row."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from lorafleet.adapters.architecture import model_architecture
from lorafleet.core.ids import random_token
from lorafleet.devtools.services import Service, start_worker

from tests.adapter_factory import write_adapter
from tests.helpers import ledger_row, pico
from tests.integration.test_adapters import upload

pytestmark = pytest.mark.engine

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris? Answer in celsius."}]
EMBED_MODEL = "SmolLM2-135M-embed"


@pytest.fixture(scope="module")
async def adapter_name(gateway, tenant_key, model_path, tmp_path_factory, model_name) -> str:
    folder = write_adapter(tmp_path_factory.mktemp("surface") / "a", arch=model_architecture(model_path), rank=8,
                           modules=["q_proj", "v_proj"], seed=41)
    name = f"surface-{random_token(6)}"
    answer = await upload(gateway, tenant_key.secret, name, folder, base_model=model_name)
    assert answer.status_code == 201, answer.text
    return name


def _check_weather_call(name: str, arguments: str) -> None:
    assert name == "get_weather"
    parsed = json.loads(arguments)
    assert set(parsed) == {"city", "unit"} and isinstance(parsed["city"], str) and len(parsed["city"]) <= 40
    assert parsed["unit"] in ("celsius", "fahrenheit")


# ---- the Responses API ------------------------------------------------------------------------------


async def test_a_response_chain_through_an_adapter_and_its_usage_is_the_ledgers(client, db, adapter_name):
    raw = await client.responses.with_raw_response.create(model=adapter_name, instructions="Answer briefly.",
                                                          input="My name is Ada. Say hello.", max_output_tokens=16,
                                                          temperature=0)
    first = raw.parse()
    assert first.status in ("completed", "incomplete") and first.output_text
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert (row["endpoint"], row["outcome"], row["adapter_id"] is not None) == ("responses", "success", True)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (first.usage.input_tokens, first.usage.output_tokens)
    assert row["cost_pico_usd"] == pico(first.usage.model_extra["cost_micro_usd"])
    raw = await client.responses.with_raw_response.create(model=adapter_name, input="What is my name?",
                                                          previous_response_id=first.id, max_output_tokens=16)
    second = raw.parse()
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens - 8, \
        "the earlier turn was replayed to the engine"
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert row["prompt_tokens"] == second.usage.input_tokens
    assert (await client.responses.retrieve(second.id)).output_text == second.output_text


async def test_a_streamed_response_from_the_engine(client, db, model_name):
    raw = await client.responses.with_raw_response.create(model=model_name, input="Count to five.",
                                                          max_output_tokens=24, stream=True)
    events = [event async for event in raw.parse()]
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1].response
    assert text and final.output_text == text
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert row["streamed"] and (row["prompt_tokens"], row["completion_tokens"]) == \
        (final.usage.input_tokens, final.usage.output_tokens)


async def test_another_tenant_cannot_read_chain_from_or_delete_a_response(gateway, client, make_key, model_name):
    mine = await client.responses.create(model=model_name, input="A private note.", max_output_tokens=4)
    other = await make_key()
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=other.secret, max_retries=0) as theirs:
        for call in (theirs.responses.retrieve(mine.id), theirs.responses.delete(mine.id),
                     theirs.responses.input_items.list(mine.id),
                     theirs.responses.create(model=model_name, input="x", previous_response_id=mine.id)):
            with pytest.raises(openai.NotFoundError):
                await call
    assert (await client.responses.retrieve(mine.id)).id == mine.id


# ---- tool calling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}],
                         ids=["required", "named"])
async def test_a_forced_tool_call_through_an_adapter_matches_the_schema(client, db, adapter_name, choice):
    raw = await client.chat.completions.with_raw_response.create(model=adapter_name, messages=ASK, tools=[WEATHER],
                                                                 tool_choice=choice, max_tokens=120, temperature=0)
    reply = raw.parse()
    (call,) = reply.choices[0].message.tool_calls[:1]
    _check_weather_call(call.function.name, call.function.arguments)
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (reply.usage.prompt_tokens,
                                                                reply.usage.completion_tokens)


async def test_a_streamed_forced_tool_call_assembles_into_valid_arguments(client, adapter_name):
    stream = await client.chat.completions.create(model=adapter_name, messages=ASK, tools=[WEATHER],
                                                  tool_choice="required", max_tokens=120, temperature=0, stream=True)
    name, arguments = "", ""
    async for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name += call.function.name or "" if call.function else ""
            arguments += call.function.arguments or "" if call.function else ""
    _check_weather_call(name, arguments)


async def test_auto_tool_choice_is_served_and_the_tools_reach_the_template(client, db, model_name):
    """``auto`` needs the worker's parser and a template with a tools section: the model sees the tool
    (the prompt grows by its definition) and answers with text or a parsed call, never a 400."""
    plain = await client.chat.completions.create(model=model_name, messages=ASK, max_tokens=1)
    raw = await client.chat.completions.with_raw_response.create(model=model_name, messages=ASK, tools=[WEATHER],
                                                                 tool_choice="auto", max_tokens=80, temperature=0)
    reply = raw.parse()
    assert reply.usage.prompt_tokens > plain.usage.prompt_tokens + 40, "the tool definition was not rendered"
    message = reply.choices[0].message
    for call in message.tool_calls or []:
        _check_weather_call(call.function.name, call.function.arguments)
    assert message.tool_calls or message.content


async def test_a_response_with_a_function_tool_and_its_output_sent_back(client, adapter_name):
    tool = {"type": "function", **WEATHER["function"]}
    first = await client.responses.create(model=adapter_name, input=ASK[0]["content"], tools=[tool],
                                          tool_choice="required", max_output_tokens=120, temperature=0)
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls
    _check_weather_call(calls[0].name, calls[0].arguments)
    follow_up = await client.responses.create(
        model=adapter_name, previous_response_id=first.id, tools=[tool], max_output_tokens=16,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "21 degrees, sunny"}])
    assert follow_up.status in ("completed", "incomplete")
    assert follow_up.usage.input_tokens > first.usage.input_tokens, "the call and its output were replayed"


# ---- embeddings -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embed_worker(base_env: dict[str, str], log_dir: Path, model_path: Path, gateway: Service) -> Iterator[Service]:
    """SmolLM2 again, in pooling mode under a name of its own: an operator's embedding deployment."""
    env = dict(base_env, LORAFLEET_MODEL_NAME=EMBED_MODEL, LORAFLEET_MODEL_PATH=str(model_path),
               LORAFLEET_WORKER_TASK="embed", LORAFLEET_KV_CACHE_GIB="1")
    service = start_worker(env, log_dir)
    try:
        yield service
    finally:
        service.stop()


async def _wait_for_model(gateway: Service, secret: str, model: str) -> None:
    from tests.helpers import eventually

    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {secret}"}) as http:
        await eventually(lambda: http.post("/v1/embeddings", json={"model": model, "input": "x"}),
                         lambda answer: answer.status_code == 200, timeout=60)


async def test_embeddings_floats_and_base64_billed_per_input_token(gateway, embed_worker, client, db, tenant_key):
    await _wait_for_model(gateway, tenant_key.secret, EMBED_MODEL)
    raw = await client.embeddings.with_raw_response.create(model=EMBED_MODEL, input=["The sea is blue.", "Hi"],
                                                           encoding_format="float")
    floats = raw.parse()
    assert [item.index for item in floats.data] == [0, 1] and floats.model == EMBED_MODEL
    dimension = len(floats.data[0].embedding)
    assert dimension > 100 and len(floats.data[1].embedding) == dimension
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert (row["endpoint"], row["outcome"], row["completion_tokens"]) == ("embeddings", "success", 0)
    assert row["prompt_tokens"] == floats.usage.prompt_tokens > 0
    assert row["cost_pico_usd"] == pico(raw.headers["x-lorafleet-cost-micro-usd"])
    async with httpx.AsyncClient(base_url=gateway.url, headers=tenant_key.headers, timeout=60) as http:
        answer = await http.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": "The sea is blue.",
                                                         "encoding_format": "base64"})
    assert answer.status_code == 200, answer.text
    packed = base64.b64decode(answer.json()["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(packed) // 4}f", packed)
    assert decoded == pytest.approx(floats.data[0].embedding, rel=1e-4, abs=1e-5)


async def test_each_model_serves_only_its_own_routes(gateway, embed_worker, client, tenant_key, model_name):
    await _wait_for_model(gateway, tenant_key.secret, EMBED_MODEL)
    for call in (client.embeddings.create(model=model_name, input="x"),
                 client.chat.completions.create(model=EMBED_MODEL, messages=ASK, max_tokens=2),
                 client.responses.create(model=EMBED_MODEL, input="x")):
        with pytest.raises(openai.BadRequestError) as raised:
            await call
        assert raised.value.body["code"] == "unsupported_model" and raised.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as raised:
        await client.embeddings.create(model=EMBED_MODEL, input=["x"] * 10_000)
    assert raised.value.body["code"] == "too_many_inputs"
