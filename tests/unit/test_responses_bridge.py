"""The Responses API's translation to and from chat: input items, the chat request, the typed stream events."""

from __future__ import annotations

import json
from types import SimpleNamespace

import msgspec
import pytest
from lorafleet.core.errors import InvalidRequest
from lorafleet.gateway.responses_api.bridge import (
    ResponseBuilder,
    chat_request,
    function_tools,
    refuse_unsupported,
)
from lorafleet.gateway.responses_api.items import canonical_input, chat_messages
from lorafleet.gateway.responses_api.schemas import ResponseCreateRequest
from lorafleet.gateway.responses_api.stream import ResponseEvents

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _request(**fields) -> ResponseCreateRequest:
    return msgspec.convert({"model": "m", "input": "hi", **fields}, ResponseCreateRequest)


def test_a_string_input_is_one_user_message():
    (item,) = canonical_input("Hello")
    assert item["type"] == "message" and item["role"] == "user" and item["id"].startswith("msg_")
    assert chat_messages([item]) == [{"role": "user", "content": "Hello"}]


def test_a_tool_round_trip_becomes_one_assistant_turn_then_tool_results():
    items = canonical_input([
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in "}, {"type": "input_text", "text": "Paris?"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city": "Lyon"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
    ])
    messages = chat_messages(items)
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1] == {"role": "user", "content": "Weather in Paris?"}
    assert [call["id"] for call in messages[2]["tool_calls"]] == ["c1", "c2"] and messages[2]["content"] is None
    assert messages[3] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert messages[4] == {"role": "assistant", "content": "Sunny."}


@pytest.mark.parametrize(("item", "param"), [
    ({"type": "item_reference", "id": "msg_1"}, "input[0].type"),
    ({"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}, "input[0].content[0].type"),
    ({"role": "wizard", "content": "x"}, "input[0].role"),
    ({"role": "user", "content": "x", "surprise": 1}, "input[0].surprise"),
    ({"type": "function_call", "name": "f", "arguments": "{}"}, "input[0].call_id"),
])
def test_bad_items_are_a_400_naming_the_item(item, param):
    with pytest.raises(InvalidRequest) as raised:
        canonical_input([item])
    assert raised.value.param == param


def test_the_chat_request_carries_instructions_limits_tools_and_format():
    request = _request(instructions="Answer in JSON.", max_output_tokens=50, temperature=0.5, tools=[WEATHER],
                       tool_choice={"type": "function", "name": "get_weather"},
                       text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}})
    tools = function_tools(request.tools)
    built = chat_request(request, canonical_input("hi"), tools)
    assert [tool.type for tool in built.tools] == ["function"]
    chat = msgspec.to_builtins(built)
    assert chat["messages"] == [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "hi"}]
    assert (chat["max_tokens"], chat["temperature"]) == (50, 0.5)
    assert [tool["function"] for tool in chat["tools"]] == [{k: v for k, v in WEATHER.items() if k != "type"}]
    assert chat["tool_choice"]["function"] == {"name": "get_weather"}
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"},
                                                                             "strict": True}}


@pytest.mark.parametrize("fields", [{"background": True}, {"conversation": "conv_1"}, {"prompt": {"id": "p"}}])
def test_features_not_served_here_are_refused_by_name(fields):
    with pytest.raises(InvalidRequest) as raised:
        refuse_unsupported(_request(**fields))
    assert raised.value.param == next(iter(fields))


def test_only_function_tools_are_accepted():
    with pytest.raises(InvalidRequest) as raised:
        function_tools([WEATHER, {"type": "web_search"}])
    assert raised.value.param == "tools[1].type"


def test_a_whole_chat_answer_becomes_a_response():
    builder = ResponseBuilder(_request(), None, public_model="my-adapter")
    response = builder.from_chat({"choices": [{"message": {"content": "Hi!", "tool_calls": [
        {"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3}}, cost_micro_usd="0.15")
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [item["type"] for item in response["output"]] == ["message", "function_call"]
    assert response["output"][0]["content"][0]["text"] == "Hi!"
    assert response["usage"]["total_tokens"] == 10 and response["usage"]["cost_micro_usd"] == "0.15"
    assert response["model"] == "my-adapter"


def _events(raw: bytes) -> list[dict]:
    events = []
    for block in raw.split(b"\n\n"):
        if block:
            kind, data = block.split(b"\n")
            event = json.loads(data[len(b"data: "):])
            assert kind == b"event: " + event["type"].encode()
            events.append(event)
    return events


async def test_a_stream_of_text_and_a_tool_call_becomes_typed_events_then_the_stored_response():
    stored = []

    async def save(document):
        stored.append(document)

    meter = SimpleNamespace(prompt_tokens=9, completion_tokens=4, cached_prompt_tokens=3, cost="5")
    events = ResponseEvents(ResponseBuilder(_request(stream=True), None, public_model="m"), meter, save)
    raw = b"".join(filter(None, [
        events.chunk({"choices": [{"delta": {"role": "assistant", "content": ""}}]}),
        events.chunk({"choices": [{"delta": {"content": "Hel"}}]}),
        events.chunk({"choices": [{"delta": {"content": "lo"}}]}),
        events.chunk({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_1",
                                                             "function": {"name": "f", "arguments": '{"a"'}}]}}]}),
        events.chunk({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]},
                                   "finish_reason": "tool_calls"}]}),
        events.done(),
        await events.end(failed=False, error_forwarded=False),
    ]))
    parsed = _events(raw)
    assert [event["sequence_number"] for event in parsed] == list(range(len(parsed)))
    kinds = [event["type"] for event in parsed]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "".join(e["delta"] for e in parsed if e["type"] == "response.output_text.delta") == "Hello"
    assert [e["arguments"] for e in parsed if e["type"] == "response.function_call_arguments.done"] == ['{"a": 1}']
    final = parsed[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["message", "function_call"]
    assert final["usage"]["input_tokens"] == 9 and final["usage"]["output_tokens"] == 4
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 3
    assert stored == [final]


async def test_a_stream_cut_mid_way_ends_with_response_failed_and_is_not_stored():
    stored = []

    async def save(document):
        stored.append(document)

    meter = SimpleNamespace(prompt_tokens=9, completion_tokens=1, cached_prompt_tokens=0, cost="1")
    events = ResponseEvents(ResponseBuilder(_request(stream=True), None, public_model="m"), meter, save)
    raw = (events.chunk({"choices": [{"delta": {"content": "Hel"}}]}) or b"") + \
        (await events.end(failed=True, error_forwarded=False) or b"")
    final = _events(raw)[-1]
    assert final["type"] == "response.failed" and final["response"]["status"] == "failed"
    assert final["response"]["output"][0]["status"] == "incomplete"
    assert stored == []


def test_a_chains_recorded_size_bounds_the_chat_request_it_becomes():
    """Admission bounds a chained request before reading its chain: this turn's chat request plus the
    chain's summed turn_bytes must never be smaller than the chat request with the history in it."""
    from lorafleet.gateway.responses_api.bridge import function_call_item, message_item
    from lorafleet.gateway.responses_api.store import turn_bytes

    turns = [
        (canonical_input([{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Weather?"}]),
         [function_call_item("fc_1", "c1", "get_weather", '{"city": "Paris"}', "completed"),
          function_call_item("fc_2", "c2", "get_weather", '{"city": "Lyon"}', "completed")]),
        (canonical_input([{"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                          {"type": "function_call_output", "call_id": "c2", "output": [
                              {"type": "input_text", "text": "rain"}, {"type": "input_text", "text": " \u00e9\n\""}]}]),
         [message_item("msg_1", "Paris is sunny, Lyon \u201crainy\u201d.\n", "completed")]),
        (canonical_input([{"role": "assistant", "content": [{"type": "output_text", "text": "a"},
                                                             {"type": "refusal", "refusal": "no"}]}]),
         [function_call_item("fc_3", "c3", "f", "", "completed")]),
        (canonical_input([{"type": "function_call", "call_id": "c4", "name": "g", "arguments": "{}"}]), []),
    ]
    request = _request(input="And tomorrow?", instructions="x" * 100, tools=[WEATHER])
    tools = function_tools(request.tools)
    this_turn = canonical_input(request.input)
    alone = len(msgspec.json.encode(chat_request(request, this_turn, tools)))
    history: list[dict] = []
    recorded = 0
    for input_items, output in turns:
        history += input_items + output
        recorded += turn_bytes(input_items, output)
        whole = len(msgspec.json.encode(chat_request(request, history + this_turn, tools)))
        assert whole <= alone + recorded
