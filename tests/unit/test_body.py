import pytest
from lorafleet.core.errors import InvalidRequest
from lorafleet.gateway.body import decode
from lorafleet.gateway.openai.schemas import ChatCompletionRequest, CompletionRequest


def _error(body: bytes, struct=ChatCompletionRequest) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        decode(body, struct)
    return caught.value


def test_bad_field_path_becomes_param():
    error = _error(b'{"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": 5}]}')
    assert error.param == "messages[1].content"
    assert error.status_code == 400
    assert "messages[1].content" in error.message


def test_missing_field_is_named():
    assert _error(b'{"model": "m"}').param == "messages"
    assert _error(b'{"model": "m", "messages": [{"content": "hi"}]}').param == "messages[0].role"


def test_out_of_range_values():
    assert _error(b'{"model": "m", "messages": [{"role": "user", "content": "a"}], "temperature": 3}').param == "temperature"
    assert _error(b'{"model": "m", "messages": [{"role": "user", "content": "a"}], "max_tokens": 0}').param == "max_tokens"
    assert _error(b'{"model": "m", "messages": []}').param == "messages"
    assert _error(b'{"model": "m", "messages": [{"role": "wizard", "content": "a"}]}').param == "messages[0].role"


def test_not_json_and_not_an_object():
    assert "not valid JSON" in _error(b"{nope").message
    assert "JSON object" in _error(b"[1, 2]").message
    assert "empty" in _error(b"").message


def test_unknown_fields_are_accepted():
    parsed = decode(b'{"model": "m", "prompt": "hi", "top_k": 5, "ignore_eos": true}', CompletionRequest)
    assert parsed.prompt == "hi"


def test_prompt_shapes():
    for prompt in (b'"x"', b'["a", "b"]', b"[1, 2, 3]", b"[[1, 2], [3]]"):
        decode(b'{"model": "m", "prompt": ' + prompt + b"}", CompletionRequest)
    assert _error(b'{"model": "m", "prompt": ""}', CompletionRequest).param == "prompt"
    assert _error(b'{"model": "m", "prompt": {"a": 1}}', CompletionRequest).param == "prompt"


def test_unknown_field_in_strict_struct_is_named():
    from lorafleet.gateway.keys.schemas import KeyCreate

    with pytest.raises(InvalidRequest) as caught:
        decode(b'{"nme": "typo"}', KeyCreate)
    assert caught.value.param == "nme"
    assert _error(b'{"model": "m", "messages": [{"role": "user", "content": "a"}], "stream_options": {"x": 1}}').param == "stream_options.x"

