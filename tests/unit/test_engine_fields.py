"""What the engine would refuse for a model, refused by the gateway (gateway/openai/bounds.py): the edges."""

from __future__ import annotations

import msgspec
import pytest
from lorafleet.core.errors import InvalidRequest
from lorafleet.gateway.fleet.catalog import BaseModel
from lorafleet.gateway.openai.bounds import check_embedding_fields, check_engine_fields
from lorafleet.gateway.openai.schemas import ChatCompletionRequest, CompletionRequest

MODEL = BaseModel("bm_x", "m", 100, 0, "generate", vocab_size=50, hidden_size=8)
UNKNOWN_VOCABULARY = BaseModel("bm_y", "m", 100, 0, "generate")
USER = [{"role": "user", "content": "hi"}]


def _chat(**fields: object) -> ChatCompletionRequest:
    return msgspec.convert({"model": "m", "messages": USER, **fields}, ChatCompletionRequest)


def _completion(**fields: object) -> CompletionRequest:
    return msgspec.convert({"model": "m", "prompt": "hi", **fields}, CompletionRequest)


@pytest.mark.parametrize("request_", [
    _chat(max_tokens=100, stop_token_ids=[49], allowed_token_ids=[0, 49], logit_bias={"49": 1.0}),
    _chat(max_tokens=10, min_tokens=10, top_logprobs=0, n=3, temperature=0.01, top_p=0.01),
    _completion(prompt=[1] * 99, max_tokens=1),
    _completion(prompt=[[1], [49]], truncate_prompt_tokens=100),
    _completion(prompt=["a", "b"], min_tokens=16),  # completions' own default cap is 16
])
def test_the_edges_pass(request_):
    check_engine_fields(request_, MODEL)


@pytest.mark.parametrize(("request_", "param"), [
    (_chat(max_tokens=101), "max_tokens"),
    (_chat(stop_token_ids=[50]), "stop_token_ids"),
    (_chat(logit_bias={"50": 1.0}), "logit_bias"),
    (_completion(prompt=[1] * 100), "prompt"),
    (_completion(prompt=[[1], [50]]), "prompt[1]"),
    (_completion(min_tokens=17), "min_tokens"),
    (_chat(n=2, temperature=0.0), "n"),
])
def test_past_the_edges_is_refused(request_, param):
    with pytest.raises(InvalidRequest) as refused:
        check_engine_fields(request_, MODEL)
    assert refused.value.param == param


def test_a_model_that_did_not_say_its_vocabulary_is_not_checked_against_one():
    check_engine_fields(_chat(stop_token_ids=[10_000], max_tokens=4), UNKNOWN_VOCABULARY)


def test_the_responses_route_names_its_own_fields():
    with pytest.raises(InvalidRequest) as refused:
        check_engine_fields(_chat(max_tokens=500), MODEL, names={"max_tokens": "max_output_tokens"})
    assert refused.value.param == "max_output_tokens" and "max_output_tokens" in refused.value.message


def test_embedding_inputs():
    check_embedding_fields([[1] * 100], None, MODEL)  # an input may fill the whole context: nothing is generated
    check_embedding_fields([[1] * 500], 100, MODEL)   # truncated by the engine to its last 100 tokens
    for inputs, truncate, param in (([[1] * 101], None, "input[0]"), ([1, 50], None, "input"),
                                    ("hi", 101, "truncate_prompt_tokens")):
        with pytest.raises(InvalidRequest) as refused:
            check_embedding_fields(inputs, truncate, MODEL)
        assert refused.value.param == param
