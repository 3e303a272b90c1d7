"""The official openai SDK against a real gateway and a real vLLM worker; usage equals the ledger."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers import ledger_row

pytestmark = pytest.mark.engine

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


async def test_models_list(client, db, model_name, tenant_key):
    models = (await client.models.list()).data
    bases = [m.id for m in models if m.owned_by == "lorafleet"]
    assert model_name in bases
    assert sorted(bases) == sorted(r["name"] for r in await db.fetch("SELECT name FROM base_models"))
    # Each of the tenant's ready adapters by its name and by each version (name@v<n>), and each alias.
    own = await db.fetch("SELECT name, version FROM adapters WHERE tenant_id = $1 AND status = 'ready'",
                         tenant_key.tenant_id)
    aliases = await db.fetch("SELECT name, alias FROM adapter_aliases WHERE tenant_id = $1", tenant_key.tenant_id)
    expected = ({r["name"] for r in own} | {f"{r['name']}@v{r['version']}" for r in own}
                | {f"{r['name']}@{r['alias']}" for r in aliases})
    listed = [m.id for m in models if m.owned_by != "lorafleet"]
    assert len(listed) == len(set(listed)) and set(listed) == expected


async def test_smollm2_gives_a_coherent_answer(client, model_name):
    reply = await client.chat.completions.create(model=model_name, messages=MESSAGES, temperature=0, max_tokens=30)
    assert "Paris" in reply.choices[0].message.content
    assert reply.model == model_name


async def test_chat_usage_equals_the_ledger_row(client, db, model_name, tenant_key):
    raw = await client.chat.completions.with_raw_response.create(model=model_name, messages=MESSAGES, max_tokens=12)
    reply = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req_")
    row = await ledger_row(db, request_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (reply.usage.prompt_tokens, reply.usage.completion_tokens)
    assert reply.usage.completion_tokens > 0
    assert row["outcome"] == "success" and row["http_status"] == 200 and not row["streamed"]
    assert (row["tenant_id"], row["api_key_id"], row["endpoint"]) == (tenant_key.tenant_id, tenant_key.key_id, "chat.completions")


async def test_stream_with_include_usage(client, db, model_name):
    raw = await client.chat.completions.with_raw_response.create(
        model=model_name, messages=MESSAGES, max_tokens=16, stream=True, stream_options={"include_usage": True},
    )
    request_id = raw.headers["x-request-id"]
    chunks = [chunk async for chunk in raw.parse()]
    *content_chunks, last = chunks
    assert all(chunk.usage is None for chunk in content_chunks), "usage only on the final chunk, like OpenAI"
    assert last.choices == [] and last.usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks if c.choices)
    assert text
    row = await ledger_row(db, request_id)
    assert row["streamed"] and row["outcome"] == "success"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (last.usage.prompt_tokens, last.usage.completion_tokens)
    assert row["ttft_ms"] is not None and row["ttft_ms"] <= row["duration_ms"]


async def test_stream_without_include_usage_hides_usage_but_meters_it(client, db, model_name):
    raw = await client.chat.completions.with_raw_response.create(
        model=model_name, messages=MESSAGES, max_tokens=16, stream=True, temperature=0,
    )
    request_id = raw.headers["x-request-id"]
    chunks = [chunk async for chunk in raw.parse()]
    assert chunks and all(chunk.choices for chunk in chunks), "no usage-only chunk for a client that did not ask"
    assert all(getattr(chunk, "usage", None) is None for chunk in chunks)
    whole = await client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=16, temperature=0)
    row = await ledger_row(db, request_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (whole.usage.prompt_tokens, whole.usage.completion_tokens)
    streamed_text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed_text == whole.choices[0].message.content


async def test_continuous_usage_is_passed_on_when_asked(gateway, tenant_key, model_name):
    body = {"model": model_name, "messages": MESSAGES, "max_tokens": 6, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    counts = []
    async with httpx.AsyncClient(base_url=gateway.url) as http, http.stream(
        "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {tenant_key.secret}"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                counts.append(openai.types.chat.ChatCompletionChunk.model_validate_json(line[6:]).usage.completion_tokens)
    assert counts == sorted(counts) and counts[-1] == counts[-2] > 0


async def test_completions_plain_and_streaming(client, db, model_name):
    raw = await client.completions.with_raw_response.create(model=model_name, prompt="Once upon a time", max_tokens=32)
    reply = raw.parse()
    # Sampled: it may end (finish_reason "stop") before the cap; it never passes it, and "length" means the cap.
    used = reply.usage.completion_tokens
    assert reply.choices[0].text and 0 < used <= 32
    assert (reply.choices[0].finish_reason == "length") == (used == 32), (reply.choices[0].finish_reason, used)
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert (row["endpoint"], row["prompt_tokens"], row["completion_tokens"]) == ("completions", reply.usage.prompt_tokens, used)

    raw = await client.completions.with_raw_response.create(
        model=model_name, prompt="Once upon a time", max_tokens=8, stream=True, stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in raw.parse()]
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert chunks[-1].usage.completion_tokens == row["completion_tokens"] == 8


async def test_engine_rejection_is_a_client_error_and_is_metered(client, db, model_name):
    """What only the engine can know (a prompt longer than the context: the gateway does not tokenize);
    what the gateway can know it refuses itself (tests/inprocess/test_engine_bounds.py)."""
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.with_raw_response.create(
            model=model_name, messages=[{"role": "user", "content": "hello " * 3000}], max_tokens=4)
    error = caught.value
    assert error.body["type"] == "invalid_request_error" and "max" in error.body["message"]
    assert error.body["code"] == "context_length_exceeded", error.body  # OpenAI's code for it
    row = await ledger_row(db, error.response.headers["x-request-id"])
    assert (row["outcome"], row["http_status"], row["completion_tokens"]) == ("upstream_error", 400, 0)


async def test_sdk_exception_classes(gateway, client, tenant_key, model_name):
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="sk_live_" + "x" * 43, max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": 7}])
    assert caught.value.body["param"] == "messages[0].content"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=model_name, messages=MESSAGES, temperature=9)
    assert caught.value.body["param"] == "temperature"
