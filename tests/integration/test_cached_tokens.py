"""Cached prompt tokens on the real engine (issue 24, items 7 and 8): vLLM's prefix cache, reported with
``--enable-prompt-tokens-details``, priced at the cached-prompt price to the pico-dollar; never shared
across tenants (the per-tenant cache salt) nor across different adapter weights (vLLM keys a cached
block by the LoRA it was computed with, and our adapter names are content-addressed ids).
"""

from __future__ import annotations

import openai
import pytest
from lorafleet.adapters.architecture import model_architecture
from lorafleet.core.ids import random_token

from tests.adapter_factory import write_adapter
from tests.helpers import eventually, pico, set_price
from tests.integration.test_adapters import upload

pytestmark = pytest.mark.engine

PROMPT, CACHED, COMPLETION = 100_003, 25_001, 200_001  # µUSD per million tokens


def _system_prompt() -> str:
    """Long enough to fill several KV blocks, and new to the engine (a random first line)."""
    facts = " ".join(f"Fact {i}: the lighthouse keeper logs ship number {i * 7} at dawn." for i in range(60))
    return f"Session {random_token(12)}. You are a careful harbour assistant. {facts}"


async def _ask(sdk: openai.AsyncOpenAI, model: str, system: str):
    raw = await sdk.chat.completions.with_raw_response.create(
        model=model, temperature=0, max_tokens=4,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Which ship comes first?"}])
    return raw.parse(), pico(raw.headers["x-lorafleet-cost-micro-usd"]), raw.headers["x-request-id"]


def _cached(reply) -> int:
    details = reply.usage.prompt_tokens_details
    return (details.cached_tokens or 0) if details is not None else 0


async def test_a_repeated_prefix_is_cached_and_costs_exactly_less(gateway, base_env, db, make_key, model_name):
    await set_price(gateway, base_env, model_name, PROMPT, COMPLETION, cached_prompt=CACHED)
    owner, stranger = await make_key(), await make_key()
    system = _system_prompt()
    async with openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=owner.secret, max_retries=0) as sdk:
        first, first_cost, _ = await _ask(sdk, model_name, system)
        second, second_cost, second_id = await _ask(sdk, model_name, system)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens > 256
    assert _cached(first) == 0, "a new prefix: nothing to reuse"
    cached = _cached(second)
    assert 0 < cached <= second.usage.prompt_tokens, "the second request reuses the first one's blocks"
    assert first.usage.completion_tokens == second.usage.completion_tokens  # greedy, same prompt
    assert first_cost - second_cost == cached * (PROMPT - CACHED), "cheaper by exactly the cached price difference"
    row = await eventually(lambda: db.fetchrow("SELECT * FROM usage_ledger WHERE request_id = $1", second_id),
                           lambda found: found is not None, what="the second request's ledger row")
    assert (row["cached_prompt_tokens"], row["cost_pico_usd"]) == (cached, second_cost)

    # Another tenant's identical request: its own cache salt, so none of the owner's blocks.
    async with openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=stranger.secret, max_retries=0) as sdk:
        theirs, theirs_cost, _ = await _ask(sdk, model_name, system)
    assert _cached(theirs) == 0 and theirs_cost == first_cost


async def test_the_same_text_through_two_adapters_shares_nothing(gateway, base_env, make_key, model_name, model_path,
                                                                 tmp_path):
    owner = await make_key()
    arch = model_architecture(model_path)
    names = []
    for seed in (101, 102):
        folder = write_adapter(tmp_path / f"weights{seed}", arch=arch, rank=8, modules=["q_proj", "v_proj"], seed=seed)
        name = f"cache-{seed}-{random_token(4).lower()}"
        response = await upload(gateway, owner.secret, name, folder, base_model=model_name)
        assert response.status_code == 201, response.text
        names.append(name)
    system = _system_prompt()
    async with openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=owner.secret, max_retries=0) as sdk:
        base, _, _ = await _ask(sdk, model_name, system)          # the base model computes the prefix
        one, _, _ = await _ask(sdk, names[0], system)             # different weights: its own blocks
        two, _, _ = await _ask(sdk, names[1], system)
        one_again, _, _ = await _ask(sdk, names[0], system)       # the same adapter again: its own cache
    assert _cached(base) == 0 and _cached(one) == 0 and _cached(two) == 0
    assert _cached(one_again) > 0
