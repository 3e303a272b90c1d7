"""``/v1/responses`` through the real gateway with the official openai SDK, in front of stub workers.

A response is served as a chat completion: what the worker receives, what the client gets (whole
and as typed events), what is stored and chained with ``previous_response_id``, what is billed.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from lorafleet.devtools.stub_worker import PROMPT_TOKENS, TOOL_ARGUMENTS

from tests.helpers import last_sent, ledger_row, pico, wait_rows
from tests.inprocess.conftest import STUB_MODEL

CHUNKS = 8  # what a stub worker answers: "ok " this many times, finish_reason "length"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _sdk(platform, tenant) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=platform.url + "/v1", api_key=tenant.secret, max_retries=0)


def _sent(platform) -> dict:
    """The chat request the last call sent to a worker."""
    return last_sent(platform)


async def test_a_response_is_a_chat_completion_underneath_billed_as_responses(platform, tenant, db):
    async with _sdk(platform, tenant) as sdk:
        raw = await sdk.responses.with_raw_response.create(model=STUB_MODEL, input="Hello", instructions="Be brief.",
                                                           max_output_tokens=16, temperature=0.5)
    response = raw.parse()
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.output_text == "ok " * CHUNKS
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.model == STUB_MODEL and response.instructions == "Be brief." and response.temperature == 0.5
    assert (response.usage.input_tokens, response.usage.output_tokens) == (PROMPT_TOKENS, CHUNKS)
    assert response.usage.total_tokens == PROMPT_TOKENS + CHUNKS
    sent = _sent(platform)
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert sent["max_tokens"] == 16 and sent["temperature"] == 0.5 and not sent.get("stream")
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert (row["endpoint"], row["outcome"], row["prompt_tokens"], row["completion_tokens"]) == \
        ("responses", "success", PROMPT_TOKENS, CHUNKS)
    assert row["cost_pico_usd"] == pico(raw.headers["x-lorafleet-cost-micro-usd"])
    assert response.usage.model_extra["cost_micro_usd"] == raw.headers["x-lorafleet-cost-micro-usd"]


async def test_a_streamed_response_is_typed_events_in_order_and_billed_once(platform, tenant, db):
    async with _sdk(platform, tenant) as sdk:
        stream = await sdk.responses.create(model=STUB_MODEL, input="Hello", stream=True)
        events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds.count("response.output_text.delta") == CHUNKS
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    final = events[-1].response
    assert text == final.output_text == "ok " * CHUNKS
    assert (final.usage.input_tokens, final.usage.output_tokens) == (PROMPT_TOKENS, CHUNKS)
    assert _sent(platform)["stream"] is True
    async with _sdk(platform, tenant) as sdk:
        stored = await sdk.responses.retrieve(final.id)
    assert stored.output_text == text and stored.status == "incomplete"
    await wait_rows(db, tenant.tenant_id, 1)  # the gateway writes ledger rows in batches, a few ms later
    rows = await db.fetch("SELECT endpoint, streamed, outcome, completion_tokens, cost_pico_usd FROM usage_ledger "
                          "WHERE tenant_id = $1", tenant.tenant_id)
    assert [tuple(row.values())[:4] for row in rows] == [("responses", True, "success", CHUNKS)]
    assert rows[0]["cost_pico_usd"] == pico(final.usage.model_extra["cost_micro_usd"])


async def test_previous_response_id_replays_the_conversation(platform, tenant):
    async with _sdk(platform, tenant) as sdk:
        first = await sdk.responses.create(model=STUB_MODEL, input="My name is Ada.", instructions="Be kind.")
        second = await sdk.responses.create(model=STUB_MODEL, input="What is my name?",
                                            previous_response_id=first.id)
        # As OpenAI's: the turns are carried over, the earlier instructions are not.
        assert _sent(platform)["messages"] == [
            {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "ok " * CHUNKS},
            {"role": "user", "content": "What is my name?"}]
        third = await sdk.responses.create(model=STUB_MODEL, input="And again?", previous_response_id=second.id)
        assert [message["content"] for message in _sent(platform)["messages"]] == [
            "My name is Ada.", "ok " * CHUNKS, "What is my name?", "ok " * CHUNKS, "And again?"]
        assert third.previous_response_id == second.id
        items = await sdk.responses.input_items.list(second.id)
        assert [item.content[0].text for item in items.data] == ["What is my name?"]


async def test_stored_responses_are_read_back_listed_and_deleted(platform, tenant):
    async with _sdk(platform, tenant) as sdk:
        created = await sdk.responses.create(model=STUB_MODEL, input=[
            {"role": "user", "content": "one"}, {"role": "user", "content": [{"type": "input_text", "text": "two"}]}])
        fetched = await sdk.responses.retrieve(created.id)
        assert fetched.model_dump() == created.model_dump()
        ascending = await sdk.responses.input_items.list(created.id, order="asc")
        assert [item.content[0].text for item in ascending.data] == ["one", "two"]
        page = await sdk.responses.input_items.list(created.id, order="asc", limit=1, after=ascending.data[0].id)
        assert [item.content[0].text for item in page.data] == ["two"] and not page.has_more
        newest = await sdk.responses.input_items.list(created.id, limit=1)  # desc by default
        assert [item.content[0].text for item in newest.data] == ["two"] and newest.has_more
        rest = await sdk.responses.input_items.list(created.id, after=newest.data[0].id)
        assert [item.content[0].text for item in rest.data] == ["one"] and not rest.has_more
        unknown = await sdk.responses.input_items.list(created.id, after="msg_not_in_this_response")
        assert unknown.data == [] and not unknown.has_more
        deleted = await sdk.responses.delete(created.id)
        assert deleted is None or getattr(deleted, "deleted", True)
        for call in (sdk.responses.retrieve(created.id), sdk.responses.delete(created.id),
                     sdk.responses.create(model=STUB_MODEL, input="x", previous_response_id=created.id)):
            with pytest.raises(openai.NotFoundError):
                await call
        unstored = await sdk.responses.create(model=STUB_MODEL, input="x", store=False)
        with pytest.raises(openai.NotFoundError):
            await sdk.responses.retrieve(unstored.id)


async def test_another_tenants_response_is_not_found(platform, tenant, other_tenant):
    async with _sdk(platform, tenant) as mine, _sdk(platform, other_tenant) as theirs:
        created = await mine.responses.create(model=STUB_MODEL, input="secret plans")
        before = len([body for worker in platform.workers for body in worker.behaviour.received])
        for call in (theirs.responses.retrieve(created.id), theirs.responses.input_items.list(created.id),
                     theirs.responses.delete(created.id),
                     theirs.responses.create(model=STUB_MODEL, input="x", previous_response_id=created.id)):
            with pytest.raises(openai.NotFoundError) as raised:
                await call
            assert "secret plans" not in str(raised.value.body)
        after = len([body for worker in platform.workers for body in worker.behaviour.received])
        assert after == before, "a chain from another tenant's response reached a worker"
        assert (await mine.responses.retrieve(created.id)).id == created.id


async def test_a_function_tool_is_called_and_its_output_sent_back(platform, tenant):
    async with _sdk(platform, tenant) as sdk:
        response = await sdk.responses.create(model=STUB_MODEL, input="Weather in Paris?", tools=[WEATHER],
                                              tool_choice="required")
        (call,) = response.output
        assert call.type == "function_call" and call.name == "get_weather"
        assert json.loads(call.arguments) == json.loads("".join(TOOL_ARGUMENTS))
        sent = _sent(platform)
        assert [tool["function"] for tool in sent["tools"]] == [{key: value for key, value in WEATHER.items()
                                                                 if key != "type"}]
        assert sent["tool_choice"] == "required"
        follow_up = await sdk.responses.create(
            model=STUB_MODEL, previous_response_id=response.id, tools=[WEATHER],
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
        assert follow_up.output_text == "ok " * CHUNKS
        messages = _sent(platform)["messages"]
        assert messages[-2]["tool_calls"][0]["id"] == call.call_id
        assert messages[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


async def test_a_streamed_function_call_arrives_as_argument_deltas(platform, tenant):
    async with _sdk(platform, tenant) as sdk:
        stream = await sdk.responses.create(model=STUB_MODEL, input="Weather?", tools=[WEATHER], stream=True,
                                            tool_choice={"type": "function", "name": "get_weather"})
        events = [event async for event in stream]
    deltas = [event.delta for event in events if event.type == "response.function_call_arguments.delta"]
    assert deltas == list(TOOL_ARGUMENTS)
    done = next(event for event in events if event.type == "response.function_call_arguments.done")
    assert done.arguments == "".join(TOOL_ARGUMENTS)
    assert events[-1].type == "response.completed"
    (item,) = events[-1].response.output
    assert item.type == "function_call" and item.name == "get_weather" and item.arguments == done.arguments


async def test_a_stream_cut_by_the_worker_ends_failed_and_is_not_stored(platform, tenant, db):
    for worker in platform.workers:
        worker.behaviour.cut_after_chunks = 3
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http, \
            http.stream("POST", "/v1/responses", json={"model": STUB_MODEL, "input": "hi", "stream": True}) as answer:
        events = [json.loads(line[6:]) async for line in answer.aiter_lines() if line.startswith("data: ")]
        request_id = answer.headers["x-request-id"]
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert failed["output"][0]["content"][0]["text"] == "ok " * 3
    row = await ledger_row(db, request_id)
    assert (row["endpoint"], row["outcome"], row["completion_tokens"]) == ("responses", "upstream_error", 3)
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        assert (await http.get(f"/v1/responses/{failed['id']}")).status_code == 404


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"background": True}, "background", "unsupported_parameter"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "unsupported_parameter"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {}, "surprise": 1}]}, "tools[0].surprise", None),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x"}]}]},
     "input[0].content[0].type", None),
    ({"input": [{"type": "item_reference", "id": "msg_x"}]}, "input[0].type", None),
    ({"temperature": 9}, "temperature", None),
    ({"surprise": 1}, "surprise", None),
    ({"input": []}, "input", None),
])
async def test_what_is_not_served_is_a_400_naming_it_and_nothing_is_billed(platform, tenant, db, body, param, code):
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        answer = await http.post("/v1/responses", json={"model": STUB_MODEL, "input": "hi", **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    if code:
        assert error["code"] == code
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant.tenant_id) == 0


async def test_text_postgresql_cannot_hold_is_still_answered_and_stored(platform, tenant):
    """jsonb holds no U+0000: the response is answered and stored with U+FFFD in its place."""
    async with _sdk(platform, tenant) as sdk:
        created = await sdk.responses.create(model=STUB_MODEL, input="a\x00b", instructions="c\x00d")
        assert _sent(platform)["messages"][1]["content"] == "a\x00b", "the worker gets the text as sent"
        stored = await sdk.responses.retrieve(created.id)
        assert stored.instructions == "c\ufffdd"
        items = await sdk.responses.input_items.list(created.id)
        assert items.data[0].content[0].text == "a\ufffdb"


async def test_a_chain_with_a_deleted_middle_turn_or_too_long_is_refused_not_silently_cut(platform, tenant,
                                                                                          monkeypatch):
    from lorafleet.gateway.responses_api import store

    async with _sdk(platform, tenant) as sdk:
        first = await sdk.responses.create(model=STUB_MODEL, input="one")
        second = await sdk.responses.create(model=STUB_MODEL, input="two", previous_response_id=first.id)
        third = await sdk.responses.create(model=STUB_MODEL, input="three", previous_response_id=second.id)
        monkeypatch.setattr(store, "MAX_HISTORY_BYTES", 400)  # three short turns hold more than this
        with pytest.raises(openai.BadRequestError) as too_long:
            await sdk.responses.create(model=STUB_MODEL, input="four", previous_response_id=third.id)
        assert too_long.value.body["code"] == "conversation_too_long"
        assert too_long.value.body["param"] == "previous_response_id"
        monkeypatch.undo()
        await sdk.responses.delete(second.id)
        with pytest.raises(openai.NotFoundError) as gap:
            await sdk.responses.create(model=STUB_MODEL, input="four", previous_response_id=third.id)
        assert gap.value.body["param"] == "previous_response_id" and first.id not in gap.value.message
        assert second.id in gap.value.message  # its own id, deleted by this tenant: nothing of anyone else's


async def test_annotations_and_logprobs_sent_back_are_not_stored(platform, tenant):
    padding = [{"type": "url_citation", "url": "https://example.com/" + "x" * 1000}] * 50
    async with _sdk(platform, tenant) as sdk:
        created = await sdk.responses.create(model=STUB_MODEL, input=[
            {"role": "assistant", "content": [{"type": "output_text", "text": "earlier", "annotations": padding,
                                               "logprobs": [{"token": "x", "logprob": -1.0}] * 100}]},
            {"role": "user", "content": "next"}])
        items = await sdk.responses.input_items.list(created.id, order="asc")
    stored = items.data[0].content[0]
    assert stored.text == "earlier" and stored.annotations == [] and not getattr(stored, "logprobs", None)


async def test_a_deeply_nested_tool_schema_with_a_nul_is_still_answered_and_stored(platform, tenant):
    schema: dict = {"type": "object", "description": "a\x00b"}
    for _ in range(15):  # as deep as a schema may nest (32 levels: openai/structured.py)
        schema = {"type": "object", "properties": {"x": schema}}
    tool = {**WEATHER, "parameters": schema}
    async with _sdk(platform, tenant) as sdk:
        created = await sdk.responses.create(model=STUB_MODEL, input="hi", tools=[tool], tool_choice="none")
        fetched = await sdk.responses.retrieve(created.id)
        with pytest.raises(openai.BadRequestError) as deeper:
            await sdk.responses.create(model=STUB_MODEL, input="hi", tool_choice="none",
                                       tools=[{**WEATHER, "parameters": {"type": "object", "properties": {"y": schema}}}])
    assert fetched.id == created.id and len(fetched.tools) == 1
    assert deeper.value.body["param"].startswith("tools[0].parameters.properties.y.properties.x")
