"""Money logic without a database: rounding, worst cases, token bounds, cents, usage parameters."""

import datetime as dt

import pytest
from lorafleet.billing.pricing import Price, PriceBook, cost_micro_usd, worst_case_cost
from lorafleet.billing.stripe_export import allocate_cents, cents_half_up
from lorafleet.billing.usage import parse_query
from lorafleet.core.errors import InvalidRequest
from lorafleet.gateway.metering.ratelimit import duration_text
from lorafleet.gateway.openai.bounds import (
    TEMPLATE_ALLOWANCE,
    chat_demand,
    completion_demand,
)
from lorafleet.gateway.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    FunctionDefinition,
    Tool,
    UserMessage,
)

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def _price(prompt: int, completion: int, surcharge: int = 0, when: dt.datetime = T0, id: int = 1) -> Price:
    return Price(id, "bm", prompt, completion, surcharge, when)


def test_cost_rounds_half_up_once_per_request():
    price = _price(1, 0)  # 1 µUSD per million tokens
    assert cost_micro_usd(price, 499_999, 0, adapter=False) == 0
    assert cost_micro_usd(price, 500_000, 0, adapter=False) == 1  # exactly half: up
    assert cost_micro_usd(price, 1_499_999, 0, adapter=False) == 1
    assert cost_micro_usd(None, 10**9, 10**9, adapter=True) == 0  # unpriced: free
    # $0.15/M prompt, $0.60/M completion, $0.05/M adapter surcharge on all tokens
    price = _price(150_000, 600_000, 50_000)
    assert cost_micro_usd(price, 1000, 200, adapter=False) == 150 + 120
    assert cost_micro_usd(price, 1000, 200, adapter=True) == 150 + 120 + 60
    assert cost_micro_usd(price, 3, 7, adapter=True) == 5  # (450,000 + 4,200,000 + 500,000) / 10⁶ = 5.15 → 5


def test_worst_case_clamps_to_the_context_with_the_cheaper_side_giving_way():
    cheap_prompt = _price(100_000, 300_000)
    # 1,500 prompt + 1,000 completion > 2,048: the cheaper prompt gives way
    assert worst_case_cost(cheap_prompt, 1500, 1000, 2048, adapter=False) == \
        cost_micro_usd(cheap_prompt, 1048, 1000, adapter=False)
    cheap_completion = _price(300_000, 100_000)
    assert worst_case_cost(cheap_completion, 1500, 1000, 2048, adapter=False) == \
        cost_micro_usd(cheap_completion, 1500, 548, adapter=False)
    # several sequences: no joint clamp
    assert worst_case_cost(cheap_prompt, 1500, 1000, None, adapter=False) == \
        cost_micro_usd(cheap_prompt, 1500, 1000, adapter=False)


def test_price_book_picks_the_version_in_effect():
    book = PriceBook([_price(1, 1, when=T0, id=1), _price(2, 2, when=T0 + dt.timedelta(days=10), id=2)])
    assert book.at("bm", T0 - dt.timedelta(seconds=1)) is None
    assert book.at("bm", T0).id == 1
    assert book.at("bm", T0 + dt.timedelta(days=10)).id == 2
    assert book.at("other", T0) is None


def test_demand_covers_the_whole_body_template_and_choices():
    import msgspec

    request = ChatCompletionRequest(model="m", messages=[UserMessage(content="héllo")], max_tokens=10, n=3)
    body = msgspec.json.encode(request)
    demand = chat_demand(request, len(body), 2048, max_sequences=128)
    assert demand.prompt_tokens >= len("héllo".encode()) + TEMPLATE_ALLOWANCE
    assert (demand.completion_tokens, demand.sequences) == (30, 3)
    unlimited = completion_demand(CompletionRequest(model="m", prompt="x" * 5000), 2048, max_prompts=128,
                                  max_sequences=128)
    assert (unlimited.prompt_tokens, unlimited.completion_tokens) == (2048, 2048)  # each side capped by the context
    ids = completion_demand(CompletionRequest(model="m", prompt=[1, 2, 3], max_tokens=4), 2048, max_prompts=128,
                            max_sequences=128)
    assert (ids.prompt_tokens, ids.completion_tokens, ids.sequences) == (3, 4, 1)
    batch = completion_demand(CompletionRequest(model="m", prompt=["a", "b"], max_tokens=4), 2048, max_prompts=128,
                              max_sequences=128)
    assert (batch.completion_tokens, batch.sequences) == (8, 2)


def test_everything_the_template_renders_counts_in_the_worst_case():
    import msgspec

    plain = ChatCompletionRequest(model="m", messages=[UserMessage(content="hi")], max_tokens=1)
    with_documents = msgspec.structs.replace(plain, documents=[{"title": "t", "text": "x" * 3000}])
    with_tools = msgspec.structs.replace(plain, tools=[Tool(function=FunctionDefinition(
        name="f", parameters={"type": "object", "description": "y" * 3000}))])
    small = chat_demand(plain, len(msgspec.json.encode(plain)), 100_000, max_sequences=128).prompt_tokens
    for bigger in (with_documents, with_tools):
        assert chat_demand(bigger, len(msgspec.json.encode(bigger)), 100_000, max_sequences=128).prompt_tokens > small + 3000


def test_fan_out_is_bounded():
    with pytest.raises(InvalidRequest) as too_many:
        completion_demand(CompletionRequest(model="m", prompt=["a"] * 200, max_tokens=1), 2048, max_prompts=128,
                          max_sequences=10_000)
    assert too_many.value.code == "too_many_prompts"
    with pytest.raises(InvalidRequest) as fan_out:
        completion_demand(CompletionRequest(model="m", prompt=["a"] * 100, n=16, max_tokens=1), 2048,
                          max_prompts=128, max_sequences=128)
    assert fan_out.value.code == "too_many_sequences" and fan_out.value.param == "n"


def test_cents_add_up_to_the_rounded_total():
    amounts = [1_234_567, 2_000_004, 333_333, -500_000]
    cents = allocate_cents(amounts)
    assert sum(cents) == cents_half_up(sum(amounts))
    assert all(abs(c * 10_000 - a) < 10_000 for c, a in zip(cents, amounts))
    assert cents_half_up(5_000) == 1 and cents_half_up(4_999) == 0


def test_usage_parameters():
    now = dt.datetime(2026, 11, 28, 10, 30, tzinfo=dt.UTC)
    query = parse_query({"bucket": "hour", "start": "2026-11-28T08:15:00Z", "group_by": "key,adapter,key"}, now)
    assert (query.start, query.end) == (dt.datetime(2026, 11, 28, 8, tzinfo=dt.UTC), dt.datetime(2026, 11, 28, 11, tzinfo=dt.UTC))
    assert query.group_by == ("key", "adapter")
    assert parse_query({"start": "1764547200", "end": "1764633600"}, now).bucket == "day"
    for params, param in (({"bucket": "minute"}, "bucket"), ({"start": "2026-11-28"}, "start"),
                          ({"group_by": "tenant"}, "group_by"), ({"start": "2026-11-28T00:00:00Z",
                                                                 "end": "2026-11-27T00:00:00Z"}, "end")):
        with pytest.raises(InvalidRequest) as error:
            parse_query(params, now)
        assert error.value.param == param


def test_reset_durations_look_like_openais():
    assert duration_text(20) == "20ms"
    assert duration_text(1500) == "1.5s"
    assert duration_text(360_000) == "6m0s"
