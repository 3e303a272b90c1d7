"""Money logic without a database: rounding, worst cases, token bounds, cents, usage parameters."""

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lorafleet.billing.pricing import (
    Price,
    PriceBook,
    cost_pico_usd,
    micro_usd,
    micro_usd_ceil,
    micro_usd_text,
    worst_case_cost,
)
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


def test_a_requests_cost_is_exact_in_pico_usd():
    price = _price(1, 0)  # 1 µUSD per million tokens: a token costs one pico-USD
    assert cost_pico_usd(price, 1, 0, adapter=False) == 1
    assert cost_pico_usd(price, 499_999, 0, adapter=False) == 499_999
    assert cost_pico_usd(None, 10**9, 10**9, adapter=True) == 0  # unpriced: free
    # $0.15/M prompt, $0.60/M completion, $0.05/M adapter surcharge on all tokens
    price = _price(150_000, 600_000, 50_000)
    assert cost_pico_usd(price, 1000, 200, adapter=False) == (150 + 120) * 10**6
    assert cost_pico_usd(price, 1000, 200, adapter=True) == (150 + 120 + 60) * 10**6
    assert cost_pico_usd(price, 3, 7, adapter=True) == 450_000 + 4_200_000 + 500_000  # 5.15 µUSD, kept whole


def test_cached_prompt_tokens_cost_the_cached_price_and_are_never_more_than_the_prompt():
    price = Price(1, "bm", 150, 600, 60, T0, cached_prompt=75)  # µUSD per million tokens
    assert cost_pico_usd(price, 1000, 200, adapter=False, cached_prompt_tokens=400) == \
        (600 * 150 + 400 * 75 + 200 * 600) * 10**0
    # The surcharge is on every token, cached or not.
    assert cost_pico_usd(price, 1000, 200, adapter=True, cached_prompt_tokens=400) == \
        600 * 150 + 400 * 75 + 200 * 600 + 1200 * 60
    # An engine count above the prompt (or below zero) is clamped.
    assert cost_pico_usd(price, 10, 0, adapter=False, cached_prompt_tokens=11) == 10 * 75
    assert cost_pico_usd(price, 10, 0, adapter=False, cached_prompt_tokens=-1) == 10 * 150
    # No cached price: the prompt price (no discount).
    plain = _price(150, 600)
    assert cost_pico_usd(plain, 1000, 0, adapter=False, cached_prompt_tokens=1000) == 1000 * 150
    # The worst case admission reserves assumes nothing is cached.
    assert worst_case_cost(price, 1000, 200, None, adapter=False) == micro_usd_ceil(1000 * 150 + 200 * 600)


def test_an_aggregate_rounds_half_up_once_and_budgets_round_up():
    assert [micro_usd(p) for p in (0, 499_999, 500_000, 1_499_999, 1_500_000)] == [0, 0, 1, 1, 2]
    assert [micro_usd_ceil(p) for p in (0, 1, 999_999, 1_000_000, 1_000_001)] == [0, 1, 1, 1, 2]


def test_the_exact_cost_reads_as_decimal_micro_usd():
    assert micro_usd_text(100_000) == "0.1"
    assert micro_usd_text(1) == "0.000001"
    assert micro_usd_text(0) == "0"
    assert micro_usd_text(12_000_000) == "12"
    assert micro_usd_text(5_150_000) == "5.15"
    assert micro_usd_text(-2_500_000) == "-2.5"
    assert Decimal(micro_usd_text(123_456_789_012_345)) * 10**6 == 123_456_789_012_345


def test_ten_one_token_completions_at_a_tenth_of_a_micro_dollar_cost_one_micro_dollar():
    # issue 21, finding 6: each row rounded on its own made these free
    price = _price(0, 100_000)  # 0.1 µUSD per completion token
    rows = [cost_pico_usd(price, 1, 1, adapter=False) for _ in range(10)]
    assert micro_usd(sum(rows)) == 1 == micro_usd(cost_pico_usd(price, 10, 10, adapter=False))


@settings(max_examples=300, deadline=None)
@given(prompt_price=st.integers(0, 10**8), completion_price=st.integers(0, 10**8), surcharge=st.integers(0, 10**7),
       adapter=st.booleans(), requests=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 5000)),
                                                min_size=1, max_size=200))
def test_many_small_costs_add_up_to_the_cost_of_their_sum(prompt_price, completion_price, surcharge, adapter,
                                                            requests):
    price = _price(prompt_price, completion_price, surcharge)
    prompt = sum(p for p, _ in requests)
    completion = sum(c for _, c in requests)
    together = cost_pico_usd(price, prompt, completion, adapter=adapter)
    assert sum(cost_pico_usd(price, p, c, adapter=adapter) for p, c in requests) == together
    # and so the billed amount of the many equals the one's, to the micro-dollar
    assert micro_usd(sum(cost_pico_usd(price, p, c, adapter=adapter) for p, c in requests)) == micro_usd(together)
    # the one rounding is within half a micro-dollar of the exact amount, written out independently
    exact = Decimal(prompt * prompt_price + completion * completion_price
                    + (prompt + completion) * surcharge * adapter) / 10**6
    assert abs(Decimal(micro_usd(together)) - exact) <= Decimal("0.5")
    assert micro_usd_ceil(together) >= exact > micro_usd_ceil(together) - 1 or together == 0


@settings(max_examples=100, deadline=None)
@given(price=st.integers(1, 10**6), count=st.integers(1, 10**6))
def test_a_million_one_token_requests_cost_what_one_million_token_request_costs(price, count):
    one = _price(price, price)
    assert count * cost_pico_usd(one, 1, 0, adapter=False) == cost_pico_usd(one, count, 0, adapter=False)
    assert micro_usd(count * cost_pico_usd(one, 0, 1, adapter=True)) == micro_usd(cost_pico_usd(one, 0, count,
                                                                                                  adapter=True))


def test_worst_case_clamps_to_the_context_with_the_cheaper_side_giving_way():
    cheap_prompt = _price(100_000, 300_000)
    # 1,500 prompt + 1,000 completion > 2,048: the cheaper prompt gives way
    assert worst_case_cost(cheap_prompt, 1500, 1000, 2048, adapter=False) == \
        micro_usd_ceil(cost_pico_usd(cheap_prompt, 1048, 1000, adapter=False))
    cheap_completion = _price(300_000, 100_000)
    assert worst_case_cost(cheap_completion, 1500, 1000, 2048, adapter=False) == \
        micro_usd_ceil(cost_pico_usd(cheap_completion, 1500, 548, adapter=False))
    # several sequences: no joint clamp
    assert worst_case_cost(cheap_prompt, 1500, 1000, None, adapter=False) == \
        micro_usd_ceil(cost_pico_usd(cheap_prompt, 1500, 1000, adapter=False))


def test_a_reservation_covers_the_exact_worst_case_even_below_a_micro_dollar():
    tiny = _price(100_000, 100_000)  # 0.1 µUSD per token
    assert worst_case_cost(tiny, 1, 1, None, adapter=False) == 1     # 0.2 µUSD: reserve 1, never 0
    assert worst_case_cost(tiny, 5, 5, None, adapter=False) == 1     # exactly 1.0
    assert worst_case_cost(tiny, 5, 6, None, adapter=False) == 2     # 1.1 → 2


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


def test_a_fine_tuning_job_is_priced_for_its_trained_and_validation_tokens():
    """Issue 28, findings 1 and 4: one price for every token the trainer ran, and a worst case that holds the
    validation file once per epoch next to the training file."""
    from lorafleet.billing.pricing import training_cost_pico_usd, training_worst_case_micro_usd

    assert training_cost_pico_usd(2_000_000, 100, 50) == 150 * 2_000_000
    assert training_cost_pico_usd(2_000_000, 100) == 100 * 2_000_000
    assert training_worst_case_micro_usd(1_000_000, 1000, 500, 3) == 4500
    assert training_worst_case_micro_usd(1, 1, 0, 1) == 1  # rounded up: a budget is never passed by a fraction
