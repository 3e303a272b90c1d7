"""The most bytes a batch line's answer may have (gateway/batches/answer_bound.py): what makes it grow, and
the cap. That real answers stay under their bound is measured on the engine (benchmarks/batch_answers.py)."""

from __future__ import annotations

import msgspec
from lorafleet.core.settings import GatewaySettings
from lorafleet.gateway import preflight
from lorafleet.gateway.batches.answer_bound import answer_bound
from lorafleet.gateway.embeddings.schemas import EmbeddingRequest
from lorafleet.gateway.fleet.catalog import BaseModel, ResolvedModel
from lorafleet.gateway.openai.schemas import ChatCompletionRequest, CompletionRequest
from lorafleet.gateway.responses_api.schemas import ResponseCreateRequest

GENERATE = BaseModel("bm_g", "m", 2048, 0, "generate", 49152, 576)
EMBED = BaseModel("bm_e", "e", 512, 0, "embed", 30522, 384)
CAP = 1024 * 1024
SETTINGS = GatewaySettings()


def _bound(kind: type, base: BaseModel = GENERATE, cap: int = 2**62, **body: object) -> int:
    raw = msgspec.json.encode({"model": base.name, **body})
    request = msgspec.json.decode(raw, type=kind)
    read = preflight.before_model(request)
    prepared = preflight.with_model(request, len(raw), read, ResolvedModel(base, None), SETTINGS)
    return answer_bound(prepared, base, len(raw), cap, repeats_request=kind is ResponseCreateRequest)


USER = [{"role": "user", "content": "hi"}]


def test_it_grows_with_what_the_line_asks_for():
    plain = _bound(ChatCompletionRequest, messages=USER, max_tokens=100)
    assert _bound(ChatCompletionRequest, messages=USER, max_tokens=200) > plain
    assert _bound(ChatCompletionRequest, messages=USER, max_tokens=100, n=4, temperature=1) > plain
    with_logprobs = _bound(ChatCompletionRequest, messages=USER, max_tokens=100, logprobs=True)
    assert with_logprobs > plain
    assert _bound(ChatCompletionRequest, messages=USER, max_tokens=100, logprobs=True, top_logprobs=20) > with_logprobs
    assert _bound(ChatCompletionRequest, messages=USER, max_tokens=100, prompt_logprobs=5) > plain
    text = _bound(CompletionRequest, prompt="hello " * 50, max_tokens=1)
    assert _bound(CompletionRequest, prompt="hello " * 50, max_tokens=1, echo=True) > text
    assert _bound(CompletionRequest, prompt="hello " * 50, max_tokens=1, echo=True, logprobs=5) > \
        _bound(CompletionRequest, prompt="hello " * 50, max_tokens=1, echo=True)


def test_a_line_without_an_output_cap_is_bounded_by_the_default_one():
    assert _bound(ChatCompletionRequest, messages=USER) == _bound(
        ChatCompletionRequest, messages=USER, max_tokens=SETTINGS.default_max_output_tokens)
    assert _bound(CompletionRequest, prompt="hi") == _bound(CompletionRequest, prompt="hi", max_tokens=16)


def test_every_bound_stops_at_the_cap():
    assert _bound(CompletionRequest, cap=CAP, prompt="x" * 3000, max_tokens=2000, echo=True, logprobs=20,
                  prompt_logprobs=20) == CAP
    assert _bound(ChatCompletionRequest, cap=CAP, messages=USER, max_tokens=10) < CAP


def test_embeddings_by_their_dimensions_and_encoding():
    floats = _bound(EmbeddingRequest, EMBED, input=["a", "b"])
    assert _bound(EmbeddingRequest, EMBED, input=["a", "b"], encoding_format="base64") < floats
    assert _bound(EmbeddingRequest, EMBED, input=["a", "b", "c", "d"]) > floats
    assert _bound(EmbeddingRequest, EMBED, input=["a", "b"], dimensions=64) < floats
    unknown = BaseModel("bm_u", "u", 512, 0, "embed")  # a worker that did not say its hidden size
    assert _bound(EmbeddingRequest, unknown, cap=CAP, input="a") == CAP


def test_a_responses_object_repeats_its_request():
    short = _bound(ResponseCreateRequest, input="hi", max_output_tokens=10)
    longer = _bound(ResponseCreateRequest, input="hi", max_output_tokens=10, instructions="be brief " * 200)
    assert longer - short >= 2 * len("be brief " * 200)
