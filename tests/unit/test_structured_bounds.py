"""What steers constrained decoding is bounded before it reaches a worker: schemas, regexes, grammars,
choices, structural tags, tool-call arguments and the sampling fields that carry token ids or strings.
Each refusal is a 400 naming the field at fault."""

from __future__ import annotations

import json

import msgspec
import pytest
from lorafleet.core.errors import InvalidRequest
from lorafleet.gateway.body import decode
from lorafleet.gateway.openai.bounds import check_chat, check_completion
from lorafleet.gateway.openai.schemas import ChatCompletionRequest, CompletionRequest
from lorafleet.gateway.openai.structured import LIMITS, StructuredBudget, StructuredLimits, check_arguments
from lorafleet.gateway.responses_api.bridge import check_structured, function_tools
from lorafleet.gateway.responses_api.items import canonical_input, chat_messages
from lorafleet.gateway.responses_api.schemas import ResponseCreateRequest


def _refusal(check, *args) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as raised:
        check(*args)
    assert raised.value.status_code == 400
    return raised.value


def _schema_param(schema, limits: StructuredLimits = LIMITS) -> str:
    return _refusal(StructuredBudget(limits).schema, schema, "s").param


def _chat(**fields) -> ChatCompletionRequest:
    return msgspec.convert({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields},
                           ChatCompletionRequest)


# ---- schemas ------------------------------------------------------------------------------------

@pytest.mark.parametrize("keyword", ["minItems", "maxItems", "minLength", "maxLength", "minProperties",
                                     "maxProperties", "minContains", "maxContains"])
def test_every_count_keyword_is_bounded_wherever_it_sits(keyword):
    assert _schema_param({keyword: 100_000_000}) == f"s.{keyword}"
    nested = {"type": "object", "properties": {"a": {"type": "array", "items": {"anyOf": [{keyword: 10**8}]}}}}
    assert _schema_param(nested) == f"s.properties.a.items.anyOf[0].{keyword}"
    StructuredBudget().schema({keyword: LIMITS.max_count if "Length" not in keyword else 100}, "s")


@pytest.mark.parametrize("value", [-1, 1.5, "5", True, float("nan")])
def test_a_count_keyword_must_be_a_non_negative_integer(value):
    assert _schema_param({"minItems": value}) == "s.minItems"


@pytest.mark.parametrize("value", [1e300, float("inf"), -(2.0**64), "0"])
def test_numeric_range_keywords_are_finite_and_int64_sized(value):
    assert _schema_param({"type": "integer", "maximum": value}) == "s.maximum"


def test_minimum_and_maximum_within_int64_pass():
    StructuredBudget().schema({"type": "integer", "minimum": -(2**62), "exclusiveMaximum": 2**62}, "s")


def test_a_schema_nested_past_the_depth_bound_is_refused_where_it_crosses():
    schema: dict = {}
    inner = schema
    for _ in range(LIMITS.schema_depth + 5):
        inner["items"] = {}
        inner = inner["items"]
    param = _schema_param(schema)
    assert param.startswith("s.items.items") and param.count("items") == LIMITS.schema_depth
    shallow: dict = {}
    inner = shallow
    for _ in range(LIMITS.schema_depth - 1):
        inner["items"] = {}
        inner = inner["items"]
    StructuredBudget().schema(shallow, "s")


def test_data_inside_a_schema_counts_for_depth_too():
    deep_default = {"type": "object", "default": json.loads("[" * 40 + "]" * 40)}
    assert _schema_param(deep_default) == "s.default"


@pytest.mark.parametrize(("build", "counter"), [
    (lambda n: {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(n)}}, "properties"),
    (lambda n: {"type": "array", "prefixItems": [{"type": "integer"}] * n}, "tuple_items"),
    (lambda n: {"enum": list(range(n))}, "enum_values"),
    (lambda n: {"anyOf": [{"const": i} for i in range(n)]}, "branches"),
])
def test_counts_of_properties_items_enum_values_and_branches_are_bounded(build, counter):
    limit = getattr(LIMITS, counter)
    StructuredBudget().schema(build(limit), "s")
    refused = _refusal(StructuredBudget().schema, build(limit + 1), "s")
    assert refused.code == "invalid_structured_output" and str(limit) in refused.message


def test_one_request_shares_one_budget_across_its_schemas():
    """tool_choice "required" turns every tool's parameters into one schema: the tools count together."""
    half = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(LIMITS.properties // 2 + 1)}}
    tools = [{"type": "function", "function": {"name": f"t{index}", "parameters": half}} for index in range(2)]
    assert _refusal(check_chat, _chat(tools=tools)).param == "tools[1].function.parameters.properties"
    check_chat(_chat(tools=tools[:1]))


def test_the_request_s_schemas_are_bounded_in_bytes():
    big = {"type": "object", "description": "x" * LIMITS.schema_bytes}
    assert _refusal(check_chat, _chat(response_format={"type": "json_schema", "json_schema": {
        "name": "s", "schema": big}})).param == "response_format.json_schema.schema"


# ---- recursion and references --------------------------------------------------------------------

@pytest.mark.parametrize(("schema", "param"), [
    ({"$ref": "#"}, "s.$ref"),
    ({"anyOf": [{"$ref": "#"}, {"type": "string"}]}, "s.anyOf[0].$ref"),
    ({"allOf": [{"not": {"$ref": "#"}}]}, "s.allOf[0].not.$ref"),
    ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"oneOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"},
     "s.$defs.b.oneOf[0].$ref"),
])
def test_a_reference_cycle_that_nests_no_value_is_refused(schema, param):
    refused = _refusal(StructuredBudget().schema, schema, "s")
    assert refused.code == "recursive_schema" and refused.param == param


def test_recursion_through_a_nested_value_is_a_tree_and_allowed():
    tree = {"$defs": {"node": {"type": "object", "properties": {
        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}, "$ref": "#/$defs/node"}
    StructuredBudget().schema(tree, "s")
    StructuredBudget().schema({"type": "object", "properties": {"next": {"$ref": "#"}}}, "s")


@pytest.mark.parametrize("ref", ["#/$defs/missing", "https://example.com/schema.json", "other.json#/a", "#anchor", 5])
def test_references_must_resolve_inside_the_schema(ref):
    assert _schema_param({"$defs": {"a": {"type": "string"}}, "$ref": ref}) == "s.$ref"


def test_dynamic_references_are_refused():
    assert _schema_param({"$dynamicRef": "#meta"}) == "s.$dynamicRef"


def test_a_json_pointer_with_escapes_resolves():
    StructuredBudget().schema({"$defs": {"a/b": {"type": "string"}}, "$ref": "#/$defs/a~1b"}, "s")


# ---- regexes, grammars, repetitions ---------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["a{100001}", "[0-9]{2,20000}", "(ab){10001,}", "x{1,}y{0,99999}"])
def test_regex_repetition_counts_are_bounded(pattern):
    refused = _refusal(StructuredBudget().regex, pattern, "structured_outputs.regex")
    assert refused.param == "structured_outputs.regex" and "repetition" in refused.message


@pytest.mark.parametrize("pattern", [r"\{99999\}", "[{99999}]", r"\p{L}+", r"[\]{99999}]", "^[a-z]{2,8}$"])
def test_braces_that_are_not_quantifiers_do_not_count(pattern):
    StructuredBudget().regex(pattern, "r")


def test_a_regex_is_bounded_in_length():
    assert "characters" in _refusal(StructuredBudget().regex, "a" * (LIMITS.regex_chars + 1), "r").message


def test_bounded_repetitions_share_a_weight_budget_per_request():
    """xgrammar precomputes masks for each step of a bounded repetition (~2 s of CPU at 256 steps)."""
    distinct = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 200 + i} for i in range(4)}}
    refused = _refusal(StructuredBudget().schema, distinct, "s")
    assert refused.param == "s.properties.p2.maxLength" and "weigh" in refused.message
    same = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 200} for i in range(50)}}
    StructuredBudget().schema(same, "s")  # identical bounds compile once
    assert _refusal(StructuredBudget().regex, ".{1,256}-.{1,257}", "r").param == "r"
    assert _schema_param({"type": "string", "pattern": "[a-z]{300}x[a-z]{301}y[a-z]{3}"}) == "s.pattern"


@pytest.mark.parametrize("grammar", ['root ::= [a-z]{1,20000}', 'start: "a" ~ 100000', 'start: "a" ~ 1..99999'])
def test_grammar_repetitions_are_bounded(grammar):
    assert _refusal(StructuredBudget().grammar, grammar, "g").param == "g"


def test_a_grammar_is_bounded_in_length():
    assert "characters" in _refusal(StructuredBudget().grammar, "x" * (LIMITS.grammar_chars + 1), "g").message


# ---- structured_outputs, response formats, tools ------------------------------------------------------

@pytest.mark.parametrize(("outputs", "param"), [
    ({"json": {"type": "array", "minItems": 100_000_000}}, "structured_outputs.json.minItems"),
    ({"json": '{"type": "array", "minItems": 100000000}'}, "structured_outputs.json.minItems"),
    ({"json": '{"$ref": "#"}'}, "structured_outputs.json.$ref"),
    ({"json": "[" * 100 + "]" * 100}, "structured_outputs.json"),
    ({"json": "{not json"}, "structured_outputs.json"),
    ({"regex": "a{100000000}"}, "structured_outputs.regex"),
    ({"choice": ["x" * 1001]}, "structured_outputs.choice[0]"),
    ({"grammar": "root ::= \"a\"{100000000}"}, "structured_outputs.grammar"),
    ({"whitespace_pattern": "[ ]{1,99999}"}, "structured_outputs.whitespace_pattern"),
    ({"structural_tag": json.dumps({"type": "structural_tag", "format": {
        "type": "json_schema", "json_schema": {"type": "array", "minItems": 100_000_000}}})},
     "structured_outputs.structural_tag.format.json_schema.minItems"),
    ({"structural_tag": json.dumps({"structures": [{"begin": "<f>", "schema": {"$ref": "#"}, "end": "</f>"}],
                                    "triggers": ["<f>"]})},
     "structured_outputs.structural_tag.structures[0].schema.$ref"),
    ({"structural_tag": json.dumps({"type": "structural_tag", "format": {"type": "regex", "pattern": "a{99999}"}})},
     "structured_outputs.structural_tag.format.pattern"),
])
def test_structured_outputs_are_bounded_on_both_routes(outputs, param):
    assert _refusal(check_chat, _chat(structured_outputs=outputs)).param == param
    completion = msgspec.convert({"model": "m", "prompt": "hi", "structured_outputs": outputs}, CompletionRequest)
    assert _refusal(check_completion, completion).param == param


def test_chat_response_format_and_tool_parameters_name_the_field():
    hostile = {"type": "array", "minItems": 100_000_000}
    formatted = _chat(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": hostile}})
    assert _refusal(check_chat, formatted).param == "response_format.json_schema.schema.minItems"
    for strict in (True, False, None):
        function = {"name": "f", "parameters": {"type": "object", "properties": {"a": hostile}}}
        if strict is not None:
            function["strict"] = strict
        request = _chat(tools=[{"type": "function", "function": {"name": "ok"}}, {"type": "function", "function": function}])
        assert _refusal(check_chat, request).param == "tools[1].function.parameters.properties.a.minItems"


def test_ordinary_structured_requests_pass():
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 100}, "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
        "kind": {"enum": ["a", "b"]}, "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}},
        "required": ["name"], "additionalProperties": False}
    check_chat(_chat(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}},
                     tools=[{"type": "function", "function": {"name": "f", "parameters": schema, "strict": True}}]))
    check_completion(msgspec.convert({"model": "m", "prompt": "hi", "structured_outputs": {"choice": ["yes", "no"]}},
                                     CompletionRequest))


def test_responses_text_format_and_tools_name_the_field():
    hostile = {"type": "array", "minItems": 100_000_000}
    request = msgspec.convert({"model": "m", "input": "hi", "text": {"format": {
        "type": "json_schema", "name": "s", "schema": hostile}}}, ResponseCreateRequest)
    assert _refusal(check_structured, request, None).param == "text.format.schema.minItems"
    tools = function_tools([{"type": "function", "name": "f", "strict": True, "parameters": {"$ref": "#"}}])
    plain = msgspec.convert({"model": "m", "input": "hi"}, ResponseCreateRequest)
    assert _refusal(check_structured, plain, tools).param == "tools[0].parameters.$ref"


# ---- tool-call arguments ----------------------------------------------------------------------------

DEEP = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize(("arguments", "code"), [
    (DEEP, "invalid_tool_arguments"),
    ('{"a": ' * 40 + "1" + "}" * 40, "invalid_tool_arguments"),
    ("[1, 2]", "invalid_tool_arguments"),
    ('"{}"', "invalid_tool_arguments"),
    ("42", "invalid_tool_arguments"),
    ('{"city": "Par', "invalid_tool_arguments"),
])
def test_tool_call_arguments_are_a_bounded_json_object(arguments, code):
    refused = _refusal(check_arguments, arguments, "p")
    assert refused.code == code and refused.param == "p"


def test_tool_call_arguments_within_bounds_pass():
    for arguments in ("", "{}", '{"city": "Paris", "days": [1, 2]}', '{"a": ' * 31 + "1" + "}" * 31,
                      '{"text": "' + "[" * 5000 + '"}'):
        check_arguments(arguments, "p")
    assert "bytes" in _refusal(check_arguments, '{"a": "' + "x" * LIMITS.arguments_bytes + '"}', "p").message


def test_chat_history_tool_calls_are_checked_where_they_sit():
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c0", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": DEEP}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    request = msgspec.convert({"model": "m", "messages": messages}, ChatCompletionRequest)
    assert _refusal(check_chat, request).param == "messages[1].tool_calls[1].function.arguments"
    legacy = [{"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "[]"}}]
    assert _refusal(check_chat, msgspec.convert({"model": "m", "messages": legacy}, ChatCompletionRequest)).param == \
        "messages[0].function_call.arguments"


def test_responses_function_call_items_are_checked_and_a_stored_one_renders_safely():
    items = [{"role": "user", "content": "hi"},
             {"type": "function_call", "call_id": "c1", "name": "f", "arguments": DEEP}]
    assert _refusal(canonical_input, items).param == "input[1].arguments"
    # A call the model wrote and the store kept (cut short, or nested past the bound) is rendered as {}.
    stored = [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": DEEP, "id": "fc_1"},
              {"type": "function_call", "call_id": "c2", "name": "f", "arguments": '{"a": 1}', "id": "fc_2"}]
    calls = chat_messages(stored)[0]["tool_calls"]
    assert [call["function"]["arguments"] for call in calls] == ["{}", '{"a": 1}']


# ---- sampling fields ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "param"), [
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"-1": 1}}, "logit_bias"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias[...]"),
    ({"logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
    ({"stop": ["x"] * 17}, "stop"),
    ({"stop": "x" * 1001}, "stop"),
    ({"bad_words": ["x"] * 129}, "bad_words"),
    ({"bad_words": ["x" * 257]}, "bad_words[0]"),
    ({"stop_token_ids": [1] * 257}, "stop_token_ids"),
    ({"stop_token_ids": [10_000_000]}, "stop_token_ids[0]"),
    ({"allowed_token_ids": [1] * 4097}, "allowed_token_ids"),
    ({"allowed_token_ids": [-1]}, "allowed_token_ids[0]"),
    ({"seed": 2**63}, "seed"),
    ({"structured_outputs": {"structural_tag": "x" * 100_001}}, "structured_outputs.structural_tag"),
])
def test_sampling_fields_that_carry_ids_or_strings_are_bounded(fields, param):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()
    refused = _refusal(decode, body, ChatCompletionRequest)
    assert refused.param == param


def test_sampling_fields_within_bounds_decode():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"0": -100, "9999999": 100},
            "stop": ["a"] * 16, "bad_words": ["b"] * 128, "stop_token_ids": [2] * 256, "allowed_token_ids": [3] * 4096,
            "seed": -(2**63)}
    decode(json.dumps(body).encode(), ChatCompletionRequest)
