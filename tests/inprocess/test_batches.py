"""The Batch API against the real gateway app and PostgreSQL, in front of stub workers (the real engine:
tests/integration/test_batches.py): OpenAI's shapes through the official SDK, validation that names the
line, the discount to the pico-dollar, cancel, expiry, a budget that runs out mid-batch, a dispatcher
that dies holding lines, and another tenant who sees nothing.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from lorafleet.core import ids
from lorafleet.core.settings import GatewaySettings
from lorafleet.db import queries
from lorafleet.gateway.batches.inprocess import call_route
from lorafleet.gateway.context import BatchOrigin

from tests.helpers import TenantKey, dashboard, eventually, expected_cost, set_price
from tests.inprocess.conftest import STUB_MODEL

PROMPT, COMPLETION, DISCOUNT_BPS = 1_000_003, 2_000_001, 5000   # µUSD per million tokens; half price


def _sdk(url: str, tenant: TenantKey) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=tenant.secret, max_retries=0)


def _line(custom_id: str, content: str = "hi", *, url: str = "/v1/chat/completions", **body: object) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url,
            "body": {"model": STUB_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **body}}


def _jsonl(lines: list[object]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


async def _finished(sdk: openai.AsyncOpenAI, batch_id: str, timeout: float = 30.0):
    return await eventually(lambda: sdk.batches.retrieve(batch_id),
                            lambda b: b.status in ("completed", "failed", "expired", "cancelled"),
                            timeout=timeout, what=f"batch {batch_id} to end")


async def _lines_of(sdk: openai.AsyncOpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in (await sdk.files.content(file_id)).content.splitlines()]


async def _submit(sdk: openai.AsyncOpenAI, lines: list[object], endpoint: str = "/v1/chat/completions", **extra):
    file = await sdk.files.create(file=("batch.jsonl", _jsonl(lines)), purpose="batch")
    return await sdk.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h", **extra)


async def test_a_batch_runs_every_line_once_at_the_discount(platform, db, tenant):
    await set_price(platform, platform.env, STUB_MODEL, PROMPT, COMPLETION, batch_discount_bps=DISCOUNT_BPS)
    async with _sdk(platform.url, tenant) as sdk:
        batch = await _submit(sdk, [_line(f"req-{i}", f"question {i}") for i in range(12)],
                              metadata={"purpose": "nightly"})
        assert (batch.object, batch.status, batch.endpoint, batch.completion_window) == (
            "batch", "validating", "/v1/chat/completions", "24h")
        assert batch.id.startswith("batch_") and batch.metadata == {"purpose": "nightly"}
        assert batch.expires_at == pytest.approx(batch.created_at + 24 * 3600, abs=2)
        done = await _finished(sdk, batch.id)
        assert done.status == "completed", done
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (12, 12, 0)
        assert done.in_progress_at and done.finalizing_at and done.completed_at and done.error_file_id is None
        assert done.model == STUB_MODEL, "the model its lines name, as OpenAI's Batch.model"
        output = await _lines_of(sdk, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(f"req-{i}" for i in range(12))
        output_file = await sdk.files.retrieve(done.output_file_id)
        assert output_file.purpose == "batch_output"

        # Each body is exactly what the synchronous route answers (the stub's answer, our model name).
        sync = await sdk.chat.completions.with_raw_response.create(
            model=STUB_MODEL, messages=[{"role": "user", "content": "question 0"}], max_tokens=4)
        first = next(line for line in output if line["custom_id"] == "req-0")
        body = first["response"]["body"]
        assert first["error"] is None and first["response"]["status_code"] == 200
        assert first["id"].startswith("batch_req_")
        expected = json.loads(sync.http_response.text)
        for volatile in ("id", "created"):
            body.pop(volatile), expected.pop(volatile)
        for document in (body, expected):  # the cost is the one field a batch changes: it is discounted
            document["usage"].pop("cost_micro_usd", None)
        assert body == expected

    # The ledger: one row per line, under the line's derived request id, at the discount exactly.
    rows = await eventually(lambda: db.fetch("SELECT * FROM usage_ledger WHERE batch_id = $1", batch.id),
                            lambda rows: len(rows) == 12, what="the batch's ledger rows")
    assert {row["request_id"] for row in rows} == {line["response"]["request_id"] for line in output}
    assert {row["request_id"] for row in rows} == {ids.batch_line_request_id(batch.id, n) for n in range(1, 13)}
    for row in rows:
        full = expected_cost(row["prompt_tokens"], row["completion_tokens"], PROMPT, COMPLETION)
        assert row["cost_pico_usd"] == (full * (10_000 - DISCOUNT_BPS) + 5_000) // 10_000
    assert done.usage.input_tokens == sum(r["prompt_tokens"] for r in rows)
    assert done.usage.output_tokens == sum(r["completion_tokens"] for r in rows)
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens

    # Every upstream request was scheduled after interactive ones (vLLM priority).
    received = [body for worker in platform.workers for body in worker.behaviour.received]
    batch_bodies = [body for body in received if body["messages"][0]["content"].startswith("question ")
                    and "priority" in body]
    assert len(batch_bodies) == 12 and {body["priority"] for body in batch_bodies} == {100}
    assert all("priority" not in body for body in received if body not in batch_bodies)

    # /v1/usage shows the batch as its own line.
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        usage = await eventually(lambda: http.get("/v1/usage", params={"bucket": "day"}),
                                 lambda answer: len(answer.json()["data"]) == 2, what="both kinds of usage")
    kinds = {row["kind"]: row for row in usage.json()["data"]}
    assert kinds["batch"]["requests"] == 12 and kinds["requests"]["requests"] == 1
    assert kinds["batch"]["cost_pico_usd"] == sum(row["cost_pico_usd"] for row in rows)


async def test_every_refused_line_is_named_and_nothing_runs(platform, db, tenant):
    lines: list[object] = [
        _line("ok-1"),
        b"{not json",
        _line("ok-1"),                                             # the same custom_id again
        {**_line("wrong-url"), "url": "/v1/completions"},
        {**_line("wrong-method"), "method": "GET"},
        _line("streamed", stream=True),
        _line("unknown-model") | {"body": {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}},
        _line("bad-field", temperature="hot"),
        _line("extra-field", wizard=True),
        {"method": "POST", "url": "/v1/chat/completions", "body": {}},  # no custom_id
    ]
    async with _sdk(platform.url, tenant) as sdk:
        batch = await _submit(sdk, lines)
        done = await _finished(sdk, batch.id)
    assert done.status == "failed" and done.failed_at and done.output_file_id is None
    errors = {error.line: error for error in done.errors.data}
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert errors[2].code == "invalid_json_line" and errors[2].message.startswith("line 2: ")
    assert errors[3].code == "duplicate_custom_id" and errors[3].param == "custom_id"
    assert errors[4].code == "invalid_url" and "/v1/completions" in errors[4].message
    assert errors[5].code == "invalid_method"
    assert errors[6].param == "body.stream"
    assert errors[7].code == "model_not_found" and errors[7].param == "body.model"
    assert errors[8].param == "body.temperature"
    assert errors[9].param == "body.wizard"
    assert errors[10].message.startswith("line 10: ")
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE batch_id = $1", batch.id) == 0
    assert await db.fetchval("SELECT count(*) FROM batch_lines WHERE batch_id = $1", batch.id) == 0


async def test_a_file_that_is_not_a_batch_file_is_refused_at_once(platform, tenant):
    async with _sdk(platform.url, tenant) as sdk:
        tune = await sdk.files.create(file=("t.jsonl", _jsonl([_line("a")])), purpose="fine-tune")
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.batches.create(input_file_id=tune.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert refused.value.code == "invalid_file_purpose" and refused.value.param == "input_file_id"
        with pytest.raises(openai.BadRequestError) as missing:
            await sdk.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                                     completion_window="24h")
        assert missing.value.param == "input_file_id"
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        for body, param in (({"input_file_id": "file-x", "endpoint": "/v1/images", "completion_window": "24h"},
                             "endpoint"),
                            ({"input_file_id": "file-x", "endpoint": "/v1/completions", "completion_window": "1h"},
                             "completion_window")):
            answer = await http.post("/v1/batches", json=body)
            assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text


async def test_an_empty_file_fails_validation(platform, tenant):
    async with _sdk(platform.url, tenant) as sdk:
        batch = await _submit(sdk, [b"", b"  "])
        done = await _finished(sdk, batch.id)
    assert done.status == "failed" and [e.code for e in done.errors.data] == ["empty_file"]


async def test_cancel_stops_new_lines_and_bills_only_what_ran(platform, db, tenant):
    for worker in platform.workers:
        worker.behaviour.delay_seconds = 0.3
    async with _sdk(platform.url, tenant) as sdk:
        batch = await _submit(sdk, [_line(f"c-{i}") for i in range(60)])
        await eventually(lambda: sdk.batches.retrieve(batch.id), lambda b: b.request_counts.completed >= 3,
                         timeout=20, what="a few lines done")
        cancelling = await sdk.batches.cancel(batch.id)
        assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
        done = await _finished(sdk, batch.id)
        assert done.status == "cancelled" and done.cancelled_at
        output = await _lines_of(sdk, done.output_file_id)
        errors = await _lines_of(sdk, done.error_file_id)
        again = await sdk.batches.cancel(batch.id)  # cancelling a cancelled batch changes nothing
        assert again.status == "cancelled"
    ran = len(output)
    assert 3 <= ran < 60
    assert sorted(line["custom_id"] for line in output + errors) == sorted(f"c-{i}" for i in range(60))
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert all(line["response"] is None for line in errors)
    # Lines the cancel stopped are in the error file, but they did not fail (as OpenAI counts a cancel).
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (60, ran, 0)
    rows = await eventually(lambda: db.fetch("SELECT request_id FROM usage_ledger WHERE batch_id = $1", batch.id),
                            lambda rows: len(rows) == ran, what="one ledger row per line that ran")
    assert {row["request_id"] for row in rows} == {line["response"]["request_id"] for line in output}


async def test_a_batch_past_its_window_expires_with_what_finished(start_gateway, db, tenant, platform):
    for worker in platform.workers:
        worker.behaviour.delay_seconds = 0.5
    # The same blob store as the session's gateway (whose dispatcher may write this batch's files).
    blobs = str(platform.app.state.services.settings.resolved_blob_dir)
    gateway = await start_gateway(BATCH_COMPLETION_WINDOW_SECONDS="3", BATCH_LINES_PER_WORKER="1", BLOB_DIR=blobs)
    async with _sdk(gateway.url, tenant) as sdk:
        batch = await _submit(sdk, [_line(f"e-{i}") for i in range(100)])
        done = await _finished(sdk, batch.id, timeout=30)
        assert done.status == "expired" and done.expired_at
        output = await _lines_of(sdk, done.output_file_id)
        errors = await _lines_of(sdk, done.error_file_id)
    assert output, "lines that finished before the window closed are kept"
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert sorted(line["custom_id"] for line in output + errors) == sorted(f"e-{i}" for i in range(100))
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE batch_id = $1", batch.id) == len(output)


async def test_a_budget_that_runs_out_fails_the_remaining_lines_and_is_never_passed(platform, db, tenant):
    await set_price(platform, platform.env, STUB_MODEL, PROMPT, COMPLETION, batch_discount_bps=DISCOUNT_BPS)
    # A line's worst case (its body's bytes and allowance as prompt tokens, 4 completion tokens) is a few
    # hundred micro-USD at these prices; what it costs (the stub's 12 + 8 tokens, discounted) about 14.
    limit = 400
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.admin_headers) as api:
        answer = await api.patch(f"/admin/tenants/{tenant.tenant_id}", json={"monthly_spend_limit_micro_usd": limit})
        assert answer.status_code == 200, answer.text
    async with _sdk(platform.url, tenant) as sdk:
        batch = await _submit(sdk, [_line(f"b-{i}") for i in range(60)])
        done = await _finished(sdk, batch.id, timeout=60)
        output = await _lines_of(sdk, done.output_file_id)
        errors = await _lines_of(sdk, done.error_file_id)
    assert done.status == "completed"
    assert output and errors
    refused = [line for line in errors if line["response"]["status_code"] == 402]
    assert refused and {line["error"]["code"] for line in refused} == {"insufficient_quota"}
    spent = await db.fetchval("SELECT period_spent_micro_usd FROM tenant_accounts WHERE tenant_id = $1",
                              tenant.tenant_id)
    assert spent <= limit


async def test_lines_of_a_dispatcher_that_died_run_once_more_and_are_billed_once(platform, db, tenant):
    """A dispatcher claims lines and dies; one of them had even run (its ledger row is in). After the
    leases run out another dispatcher runs them: each custom_id once in the output, one ledger row each."""
    dispatcher = platform.app.state.services.dispatcher
    await dispatcher.close()  # the session gateway's own rounds stop: the test takes them
    try:
        async with _sdk(platform.url, tenant) as sdk:
            batch = await _submit(sdk, [_line(f"d-{i}") for i in range(6)])
            assert await dispatcher.validate_one()
            dead = await db.fetch(queries.claim_batch_lines, "gw_dead", platform.base_model_id, 3, 0.5)
            assert len(dead) == 3
            # One of them ran before its dispatcher died: the route answered and the ledger has its row.
            ran = dead[0]
            answer = await call_route(platform.app, ran["endpoint"], bytes(ran["body"]), BatchOrigin(
                ran["batch_id"], ran["line"], ran["request_id"], ran["tenant_id"], ran["api_key_id"]))
            assert answer.status == 200
            await eventually(lambda: db.fetchval("SELECT count(*) FROM usage_ledger WHERE request_id = $1",
                                                 ran["request_id"]), lambda n: n == 1, what="the first run's row")
            await asyncio.sleep(0.6)  # the dead dispatcher's leases run out
            for _ in range(200):
                await dispatcher.step()
                if (await sdk.batches.retrieve(batch.id)).status == "completed":
                    break
                await asyncio.sleep(0.05)
            done = await sdk.batches.retrieve(batch.id)
            assert done.status == "completed" and done.request_counts.completed == 6
            output = await _lines_of(sdk, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(f"d-{i}" for i in range(6))
        await eventually(lambda: db.fetch("SELECT request_id FROM usage_ledger WHERE batch_id = $1", batch.id),
                         lambda rows: len(rows) == 6, what="six rows")
        await asyncio.sleep(0.3)
        counts = await db.fetch("SELECT request_id, count(*) FROM usage_ledger WHERE batch_id = $1 GROUP BY 1",
                                batch.id)
        assert len(counts) == 6 and {row["count"] for row in counts} == {1}
    finally:
        dispatcher.start()


async def test_another_tenant_sees_nothing_of_a_batch(platform, tenant, other_tenant):
    async with _sdk(platform.url, tenant) as sdk:
        batch = await _submit(sdk, [_line("mine")])
        done = await _finished(sdk, batch.id)
    async with httpx.AsyncClient(base_url=platform.url, headers=other_tenant.headers) as theirs:
        missing = "batch_" + "x" * 20
        for method, path in (("GET", "/v1/batches/{}"), ("POST", "/v1/batches/{}/cancel")):
            answers = [await theirs.request(method, path.format(i)) for i in (batch.id, missing)]
            assert [a.status_code for a in answers] == [404, 404]
            assert answers[0].json() == httpx.Response(404, text=answers[1].text.replace(missing, batch.id)).json()
        assert (await theirs.get("/v1/batches")).json()["data"] == []
        for file_id in (done.output_file_id, batch.input_file_id):
            assert (await theirs.get(f"/v1/files/{file_id}/content")).status_code == 404
        # Their batch cannot name my file either.
        refused = await theirs.post("/v1/batches", json={"input_file_id": batch.input_file_id,
                                                         "endpoint": "/v1/chat/completions", "completion_window": "24h"})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_file"


async def test_list_pages_newest_first(platform, tenant):
    async with _sdk(platform.url, tenant) as sdk:
        made = [(await _submit(sdk, [_line("x")])).id for _ in range(3)]
        first = await sdk.batches.list(limit=2)
        assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
        assert [b.id async for b in sdk.batches.list(limit=2)] == made[::-1]


async def test_text_the_database_cannot_hold_is_refused_or_named(platform, tenant):
    """NUL (U+0000) in metadata is the request's fault (400); in a line's custom_id or a field name, the
    line is refused by name — never a 500, never a batch stuck validating."""
    async with _sdk(platform.url, tenant) as sdk:
        file = await sdk.files.create(file=("b.jsonl", _jsonl([_line("a")])), purpose="batch")
        async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
            answer = await http.post("/v1/batches", json={"input_file_id": file.id, "endpoint": "/v1/chat/completions",
                                                          "completion_window": "24h", "metadata": {"k": "a\x00b"}})
            assert answer.status_code == 400, answer.text
            tune = await sdk.files.create(file=("t.jsonl", b"{}\n"), purpose="fine-tune")
            answer = await http.post("/v1/fine_tuning/jobs", json={"model": STUB_MODEL, "training_file": tune.id,
                                                                   "metadata": {"k": "a\x00b"}})
            assert answer.status_code == 400, answer.text
        batch = await _submit(sdk, [_line("a\x00b"), _line("ok", **{"x\x00y": 1})])
        done = await _finished(sdk, batch.id)
    assert done.status == "failed"
    assert [(e.line, e.code) for e in done.errors.data] == [(1, "invalid_custom_id"), (2, "invalid_request")]
    assert "\\u0000" in done.errors.data[1].message


async def test_the_dashboard_shows_downloads_and_cancels_batches(platform, tenant):
    async with _sdk(platform.url, tenant) as sdk:
        done = await _finished(sdk, (await _submit(sdk, [_line("page-1"), _line("page-2")])).id)
        for worker in platform.workers:
            worker.behaviour.delay_seconds = 0.3
        slow = await _submit(sdk, [_line(f"slow-{i}") for i in range(40)])
    async with dashboard(platform.url, tenant.secret) as (http, csrf):
        listing = await http.get("/dashboard/batches")
        assert listing.status_code == 200 and done.id in listing.text and slow.id in listing.text
        page = await http.get(f"/dashboard/batches/{done.id}")
        assert "2 done, 0 failed, of 2" in page.text and f"/dashboard/batches/{done.id}/output" in page.text
        assert f"/dashboard/batches/{done.id}/errors" not in page.text  # no error file: no link
        output = await http.get(f"/dashboard/batches/{done.id}/output")
        assert output.status_code == 200 and f'filename="{done.id}.output.jsonl"' in output.headers["content-disposition"]
        assert sorted(json.loads(line)["custom_id"] for line in output.text.splitlines()) == ["page-1", "page-2"]
        assert (await http.get(f"/dashboard/batches/{done.id}/errors")).status_code == 404
        assert f'action="/dashboard/batches/{slow.id}/cancel"' in (await http.get(f"/dashboard/batches/{slow.id}")).text
        cancelled = await http.post(f"/dashboard/batches/{slow.id}/cancel", data={"csrf": csrf})
        assert cancelled.status_code == 303 and cancelled.headers["location"] == f"/dashboard/batches/{slow.id}"
        refused = await http.post(f"/dashboard/batches/{slow.id}/cancel", data={"csrf": "wrong"})
        assert refused.status_code == 403
    async with _sdk(platform.url, tenant) as sdk:
        ended = await _finished(sdk, slow.id)
    assert ended.status == "cancelled"


async def test_a_gateway_stopping_sends_its_lines_back_and_none_is_billed_twice(platform, db, tenant, start_gateway):
    """SIGTERM's path: lines still running after the drain are cut (their rows say what ran) and go back
    under their own request ids; another dispatcher answers them; each line has one ledger row."""
    session = platform.app.state.services.dispatcher
    await session.close()  # only the stopping gateway takes lines at first
    try:
        for worker in platform.workers:
            worker.behaviour.delay_seconds = 5.0
        blobs = str(platform.app.state.services.settings.resolved_blob_dir)
        stopping = await start_gateway(BLOB_DIR=blobs)
        async with _sdk(stopping.url, tenant) as sdk:
            batch = await _submit(sdk, [_line(f"s-{i}") for i in range(4)])
        running = await eventually(
            lambda: db.fetch("SELECT line, request_id FROM batch_lines WHERE batch_id = $1 AND state = 'running'",
                             batch.id), lambda rows: len(rows) == 4, what="every line running")
        dispatcher = stopping.services.dispatcher
        dispatcher.drain_seconds = 0.2
        await dispatcher.close()
        back = await db.fetch("SELECT line, request_id, state FROM batch_lines WHERE batch_id = $1", batch.id)
        assert {row["state"] for row in back} == {"pending"}
        assert {(r["line"], r["request_id"]) for r in back} == {(r["line"], r["request_id"]) for r in running}
        for worker in platform.workers:
            worker.behaviour.delay_seconds = 0.0
        session.start()
        async with _sdk(platform.url, tenant) as sdk:
            done = await _finished(sdk, batch.id)
            output = await _lines_of(sdk, done.output_file_id)
        assert done.status == "completed" and sorted(line["custom_id"] for line in output) == [f"s-{i}" for i in range(4)]
        rows = await eventually(lambda: db.fetch("SELECT request_id, outcome FROM usage_ledger WHERE batch_id = $1",
                                                 batch.id), lambda found: len(found) == 4, what="four rows")
        assert sorted(row["request_id"] for row in rows) == sorted(r["request_id"] for r in running)  # once each
        # Billed for what ran before the cut (an answer that was complete when the cut came is a success).
        assert {row["outcome"] for row in rows} <= {"client_disconnect", "success"}
    finally:
        session.start()  # a no-op when it already runs


async def test_an_expired_input_file_waits_for_its_batch_to_be_validated(platform, db, tenant):
    """The expired-files janitor leaves a batch's input file alone while the batch is validated (the lines
    are read from it then); once validated, the batch keeps its lines and the file can go."""
    from lorafleet.files.janitor import ExpiredFiles

    dispatcher = platform.app.state.services.dispatcher
    await dispatcher.close()
    try:
        async with _sdk(platform.url, tenant) as sdk:
            file = await sdk.files.create(file=("b.jsonl", _jsonl([_line("x")])), purpose="batch",
                                          extra_body={"expires_after": {"anchor": "created_at", "seconds": 3600}})
            batch = await sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                             completion_window="24h")
            await db.execute("UPDATE files SET expires_at = now() - interval '1 second' WHERE id = $1", file.id)
            expired = ExpiredFiles(platform.app.state.services.files)
            assert await expired.sweep() == 0
            assert await dispatcher.validate_one()
            assert await expired.sweep() == 1
            dispatcher.start()
            done = await _finished(sdk, batch.id)
            assert done.status == "completed" and done.request_counts.completed == 1
    finally:
        dispatcher.start()


async def test_an_ended_batch_keeps_no_prompt_or_answer_beyond_its_files(platform, db, tenant):
    """Once a batch ends its files hold every answer: its lines (prompts and answers) leave the database, so
    deleting the files deletes them for good."""
    secret = "my-secret-prompt-4711"
    async with _sdk(platform.url, tenant) as sdk:
        batch = await _submit(sdk, [_line("s-1", secret)])
        done = await _finished(sdk, batch.id)
        assert done.status == "completed"
    assert await db.fetchval("SELECT count(*) FROM batch_lines WHERE batch_id = $1", batch.id) == 0


async def test_cancelled_batches_leave_no_copy_of_their_lines(platform, db, tenant):
    """One file may back several open batches (each copies its lines into the database, within the
    tenant's file quota: next test); once they end, no copy is left."""
    dispatcher = platform.app.state.services.dispatcher
    await dispatcher.close()
    try:
        async with _sdk(platform.url, tenant) as sdk:
            file = await sdk.files.create(file=("b.jsonl", _jsonl([_line(f"r-{i}", "x" * 2000) for i in range(50)])),
                                          purpose="batch")
            created = []
            for _ in range(5):
                created.append(await sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                                        completion_window="24h"))
            for _ in created:
                await dispatcher.validate_one()
            copies = await db.fetchval("SELECT count(*) FROM batch_lines WHERE batch_id = ANY($1::text[])",
                                       [b.id for b in created])
            for b in created:
                await sdk.batches.cancel(b.id)
            await sdk.files.delete(file.id)  # the upload's storage charge is refunded
            for _ in range(200):
                await dispatcher.end_one()
                ended = [await sdk.batches.retrieve(b.id) for b in created]
                if all(b.status == "cancelled" for b in ended):
                    break
        kept = await db.fetchval("SELECT count(*) FROM batch_lines WHERE batch_id = ANY($1::text[])",
                                 [b.id for b in created])
        kept_bytes = await db.fetchval("SELECT sum(length(body)) FROM batch_lines WHERE batch_id = ANY($1::text[])",
                                       [b.id for b in created])
        billed = await db.fetchval("SELECT count(*) FROM usage_ledger WHERE batch_id = ANY($1::text[])",
                                   [b.id for b in created])
        assert copies == 250 and [b.status for b in ended] == ["cancelled"] * 5
        assert (kept, kept_bytes, billed) == (0, None, 0)
    finally:
        dispatcher.start()


async def test_a_batch_being_ended_as_expired_cannot_be_cancelled(platform, db, tenant):
    """An expired batch whose files are being written is refused a cancel (it is ending already) and ends
    `expired`, as its error file says."""
    dispatcher = platform.app.state.services.dispatcher
    await dispatcher.close()
    try:
        async with _sdk(platform.url, tenant) as sdk:
            batch = await _submit(sdk, [_line(f"e-{i}") for i in range(3)])
            assert await dispatcher.validate_one()
            await db.execute("UPDATE batches SET expires_at = now() - interval '1 second' WHERE id = $1", batch.id)
            original = dispatcher._write_files
            seen = {}

            async def racing(batch_id, ending, output, errors):
                if batch_id == batch.id:
                    try:
                        seen["cancel"] = await sdk.batches.cancel(batch_id)  # the tenant cancels mid-finalization
                    except openai.BadRequestError as refused:
                        seen["cancel"] = refused
                return await original(batch_id, ending, output, errors)

            dispatcher._write_files = racing
            try:
                for _ in range(50):
                    await dispatcher.end_one()
                    if "cancel" in seen:
                        break
            finally:
                dispatcher._write_files = original
            done = await sdk.batches.retrieve(batch.id)
            errors = await _lines_of(sdk, done.error_file_id)
        assert isinstance(seen["cancel"], openai.BadRequestError) and seen["cancel"].code == "batch_not_cancellable"
        assert done.status == "expired" and {line["error"]["code"] for line in errors} == {"batch_expired"}
    finally:
        dispatcher.start()


async def test_a_deeply_nested_line_is_named(platform, tenant):
    """A line nested 1,000 deep (msgspec raises RecursionError) is refused by its line number."""
    deep = b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":' + b"[" * 1000 + b"]" * 1000 + b"}"
    async with _sdk(platform.url, tenant) as sdk:
        batch = await _submit(sdk, [_line("ok"), deep])
        done = await _finished(sdk, batch.id)
    assert done.status == "failed"
    assert done.errors.data[0].line == 2, done.errors.data


async def test_concurrent_creates_never_pass_the_open_batch_limit(platform, db, tenant):
    """The limit's count and the insert are taken together (one tenant's creates in turn)."""
    dispatcher = platform.app.state.services.dispatcher
    limit = platform.app.state.services.settings.tenant_max_open_batches
    await dispatcher.close()
    try:
        async with _sdk(platform.url, tenant) as sdk:
            file = await sdk.files.create(file=("b.jsonl", _jsonl([_line("r")])), purpose="batch")
            for _ in range(limit - 1):
                await sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
            async def one():
                try:
                    await sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                             completion_window="24h")
                except openai.RateLimitError:
                    pass
            await asyncio.gather(*(one() for _ in range(60)))
        opened = await db.fetchval("SELECT count(*) FROM batches WHERE tenant_id = $1", tenant.tenant_id)
        await db.execute("UPDATE batches SET status = 'cancelling', ending = 'cancelled' WHERE tenant_id = $1",
                         tenant.tenant_id)
        assert opened <= limit, f"{opened} open batches, limit {limit}"
    finally:
        dispatcher.start()


async def test_an_answer_arriving_after_its_batch_ended_is_not_stored(platform, db, tenant):
    """A dispatcher whose lease renewals stalled answers a line after the batch ended without it: the
    answer is not stored and the counts stay within the total. (The ledger keeps that line's row: the
    batch's usage, summed from the ledger, includes it — what ran is billed.)"""
    dispatcher = platform.app.state.services.dispatcher
    await dispatcher.close()
    try:
        async with _sdk(platform.url, tenant) as sdk:
            batch = await _submit(sdk, [_line(f"l-{i}") for i in range(2)])
            assert await dispatcher.validate_one()
            slow = await db.fetch(queries.claim_batch_lines, "gw_slow", platform.base_model_id, 1, 0.3)
            slow = [r for r in slow if r["batch_id"] == batch.id]
            assert slow
            ran = slow[0]
            await sdk.batches.cancel(batch.id)
            await asyncio.sleep(0.5)  # gw_slow's renewal stalls (DB hiccup / blocked loop): its lease runs out
            for _ in range(2000):  # other tests' batches may be ending too: the oldest goes first
                await dispatcher.end_one()
                if (await sdk.batches.retrieve(batch.id)).status == "cancelled":
                    break
            assert (await sdk.batches.retrieve(batch.id)).status == "cancelled"
            # gw_slow's route call returns now: the ledger row, then its answer is stored.
            answer = await call_route(platform.app, ran["endpoint"], bytes(ran["body"]), BatchOrigin(
                ran["batch_id"], ran["line"], ran["request_id"], ran["tenant_id"], ran["api_key_id"]))
            stored = await db.fetchval(queries.finish_batch_line, ran["batch_id"], ran["line"], "gw_slow",
                                       ran["attempts"], answer.status, answer.body, None, None, None)
            done = await sdk.batches.retrieve(batch.id)
            errors = await _lines_of(sdk, done.error_file_id)
        rows = await eventually(lambda: db.fetchval("SELECT count(*) FROM usage_ledger WHERE batch_id = $1", batch.id),
                                lambda n: n >= 1, what="the late line's row")
        counts = done.request_counts
        assert stored is None and counts.completed + counts.failed <= counts.total, (
            f"late answer stored={stored}; counts {counts}; ledger rows {rows}; error file {[e['custom_id'] for e in errors]}")
    finally:
        dispatcher.start()


async def test_a_revoked_keys_batch_stops_and_bills_nothing(platform, db, tenant):
    dispatcher = platform.app.state.services.dispatcher
    await dispatcher.close()
    try:
        async with _sdk(platform.url, tenant) as sdk:
            batch = await _submit(sdk, [_line(f"k-{i}") for i in range(3)])
        await db.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", tenant.key_id)
    finally:
        dispatcher.start()
    row = await eventually(lambda: db.fetchrow("SELECT status, completed, failed FROM batches WHERE id = $1", batch.id),
                           lambda r: r["status"] in ("completed", "failed", "cancelled", "expired"), what="end")
    billed = await db.fetchval("SELECT count(*) FROM usage_ledger WHERE batch_id = $1 AND cost_pico_usd > 0", batch.id)
    assert row["completed"] == 0 and billed == 0


async def test_a_tenant_with_many_batches_does_not_starve_another(platform, db, tenant, other_tenant):
    """Lines are claimed from each tenant's oldest batch first: a tenant holding 64 open batches does not
    keep another tenant's newer batch from its lines."""
    dispatcher = platform.app.state.services.dispatcher
    await dispatcher.close()
    try:
        async with _sdk(platform.url, tenant) as mine, _sdk(platform.url, other_tenant) as theirs:
            file = await mine.files.create(file=("a.jsonl", _jsonl([_line(f"a-{i}") for i in range(3)])),
                                           purpose="batch")
            hog = [await mine.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                             completion_window="24h") for _ in range(64)]
            victim = await _submit(theirs, [_line("b-0")])
            while await dispatcher.validate_one():
                pass
            claimed = await db.fetch(queries.claim_batch_lines, "gw_probe", platform.base_model_id, 1000, 30.0)
            victim_lines = [r for r in claimed if r["batch_id"] == victim.id]
            # put everything back, cancel
            await db.execute("UPDATE batch_lines SET state = 'pending', claimed_by = NULL, lease_until = NULL, "
                             "attempts = attempts - 1 WHERE claimed_by = 'gw_probe'")
            for b in hog:
                await mine.batches.cancel(b.id)
            await theirs.batches.cancel(victim.id)
        assert victim_lines, f"{len(claimed)} lines claimed with room for 1000; none of the other tenant's batch"
    finally:
        dispatcher.start()


async def test_open_batches_are_bounded_by_the_file_quota(start_gateway, tenant, platform):
    """Each open batch keeps a copy of its lines in the database until it ends: the bytes of the input
    files of a tenant's unfinished batches stay within its file quota (429 `too_many_batches` beyond)."""
    blobs = str(platform.app.state.services.settings.resolved_blob_dir)
    # Long prompts and short answers: the input copies, not the outputs' room (next tests), are the bound here.
    gateway = await start_gateway(TENANT_MAX_FILE_BYTES="450000", BATCH_DISPATCH="false", BLOB_DIR=blobs)
    dispatcher = platform.app.state.services.dispatcher
    await dispatcher.close()  # the batches stay open meanwhile
    try:
        async with _sdk(gateway.url, tenant) as sdk:
            file = await sdk.files.create(file=("b.jsonl", _jsonl([_line(f"q-{i}", "x" * 20_000) for i in range(9)])),
                                          purpose="batch")
            assert 180_000 < file.bytes < 190_000
            first = await sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                             completion_window="24h")
            second = await sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                              completion_window="24h")
            with pytest.raises(openai.RateLimitError) as refused:
                await sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                         completion_window="24h")
            assert refused.value.code == "too_many_batches"
            await sdk.batches.cancel(first.id)
            await sdk.batches.cancel(second.id)
    finally:
        dispatcher.start()


async def test_a_one_line_batch_waits_out_the_minimum_deferral(start_gateway, platform, db, tenant):
    """The batch discount pays for deferral (issue 28, finding 7): under the default
    LORAFLEET_BATCH_MIN_DELAY_SECONDS a one-line batch is validated at once, but no dispatcher starts its
    line before the delay — it cannot buy an interactive answer at half price."""
    default = GatewaySettings().batch_min_delay_seconds
    assert default == 60
    blobs = str(platform.app.state.services.settings.resolved_blob_dir)
    gateway = await start_gateway(BATCH_MIN_DELAY_SECONDS=str(default), BLOB_DIR=blobs)
    async with _sdk(gateway.url, tenant) as sdk:
        batch = await _submit(sdk, [_line("now-please", "deferred question")])
        await eventually(lambda: sdk.batches.retrieve(batch.id), lambda b: b.status == "in_progress",
                         what="the batch validated")
        for dispatcher in (gateway.services.dispatcher, platform.app.state.services.dispatcher):
            await dispatcher.feed()  # a round with room on every worker
        line = await db.fetchrow("SELECT state, attempts FROM batch_lines WHERE batch_id = $1", batch.id)
        row = await db.fetchrow("SELECT run_after - created_at AS delay FROM batches WHERE id = $1", batch.id)
        still = await sdk.batches.retrieve(batch.id)
        await sdk.batches.cancel(batch.id)
    assert (line["state"], line["attempts"]) == ("pending", 0), dict(line)
    assert still.status == "in_progress" and still.request_counts.completed == 0
    assert row["delay"].total_seconds() == pytest.approx(default, abs=1)
    received = [body for worker in platform.workers for body in worker.behaviour.received]
    assert not any(body["messages"][0]["content"] == "deferred question" for body in received if "messages" in body)


async def test_a_line_the_engine_refuses_carries_the_routes_own_code(platform, tenant):
    """A line answered 4xx by the engine carries the route's own words (its envelope has no code, as OpenAI's
    for such a refusal: the line's ``error.code`` is the envelope's type), never a made-up ``http_400``; its
    response is the route's error envelope."""
    for worker in platform.workers:
        worker.behaviour.hold_marker = None
    async with _sdk(platform.url, tenant) as sdk:
        for worker in platform.workers:
            worker.behaviour.fail_next, worker.behaviour.fail_status = 1, 400
        try:
            batch = await _submit(sdk, [_line("refused")])
            done = await _finished(sdk, batch.id)
        finally:
            for worker in platform.workers:
                worker.behaviour.fail_next, worker.behaviour.fail_status = 0, 500
        [line] = await _lines_of(sdk, done.error_file_id)
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 1)
    assert line["response"]["status_code"] == 400
    envelope = line["response"]["body"]["error"]
    assert (envelope["code"], envelope["type"]) == (None, "invalid_request_error"), line
    assert line["error"]["code"] == "invalid_request_error", line


# ---- output bounds (issue 28, finding 6) -----------------------------------------------------------

async def test_an_answer_over_its_bound_is_the_lines_error_and_its_tokens_are_billed(platform, db, tenant):
    """Each line's answer is kept up to its bound (from max_tokens, n, logprobs, echo); the stub answers
    8,000 tokens (24 KB) whatever it is asked: a line that asked for 4 tokens gets `response_too_large`
    (billed: the tokens ran), one that asked for 2,000 keeps its answer — held in the blob store until the
    files are written, not in the database — and nothing of the batch is left in the blob store after.
    A third line is held at the worker so the batch cannot end (and take its lines away) before the
    running state is read."""
    await set_price(platform, platform.env, STUB_MODEL, PROMPT, COMPLETION, batch_discount_bps=DISCOUNT_BPS)
    spool = platform.app.state.services.settings.resolved_blob_dir / "batch-answers"
    for worker in platform.workers:
        worker.behaviour.chunks = 8000
        worker.behaviour.hold_marker = "held question"
        worker.behaviour.release.clear()
    try:
        async with _sdk(platform.url, tenant) as sdk:
            batch = await _submit(sdk, [_line("small", max_tokens=4), _line("large", max_tokens=2000),
                                        _line("held", "held question", max_tokens=2000)])
            kept = await eventually(lambda: db.fetchrow("SELECT answer_blob, response FROM batch_lines WHERE "
                                                        "batch_id = $1 AND custom_id = 'large' AND state = 'done'",
                                                        batch.id),
                                    lambda row: row is not None, what="the large line answered")
            for worker in platform.workers:
                worker.behaviour.release.set()
            done = await _finished(sdk, batch.id)
            output = await _lines_of(sdk, done.output_file_id)
            errors = await _lines_of(sdk, done.error_file_id)
    finally:
        for worker in platform.workers:
            worker.behaviour.chunks = 8
            worker.behaviour.hold_marker = None
            worker.behaviour.release.set()
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    assert sorted(line["custom_id"] for line in output) == ["held", "large"]
    assert all(line["response"]["body"]["choices"][0]["message"]["content"] == "ok " * 8000 for line in output)
    assert kept["response"] is None and kept["answer_blob"], "a large answer waits in the blob store"
    [refused] = errors
    assert refused["custom_id"] == "small" and refused["response"] is None
    assert refused["error"]["code"] == "response_too_large" and "billed" in refused["error"]["message"]
    rows = await eventually(lambda: db.fetch("SELECT request_id, completion_tokens, cost_pico_usd FROM usage_ledger "
                                             "WHERE batch_id = $1", batch.id), lambda rows: len(rows) == 3,
                            what="every line's row")
    assert all(row["completion_tokens"] == 8000 and row["cost_pico_usd"] > 0 for row in rows), rows
    assert not (spool / batch.id).exists(), "the batch's spooled answers were not deleted"


PROBE = {"model": STUB_MODEL, "prompt": "The quick brown fox jumps over the lazy dog. " * 5, "max_tokens": 16,
         "echo": True, "logprobs": 20, "prompt_logprobs": 20}  # issue 28's probe: ~1,000 times its input in output


async def test_a_batch_whose_output_cannot_fit_the_file_quota_is_refused_at_create(start_gateway, platform, db,
                                                                                 tenant):
    """A batch holds room for its worst-case output in the tenant's file quota from create until it ends:
    the issue's probe (echo, logprobs and prompt logprobs: up to the answer cap per line) is refused at once
    with a 409 naming input_file_id; an ordinary batch is created, holds its room while it runs, and gives
    it back for its files' actual size when it ends."""
    blobs = str(platform.app.state.services.settings.resolved_blob_dir)
    gateway = await start_gateway(TENANT_MAX_FILE_BYTES=str(4 * 1024 * 1024), BLOB_DIR=blobs)
    usage = "SELECT bytes, objects FROM tenant_storage WHERE tenant_id = $1 AND kind = 'files'"
    async with _sdk(gateway.url, tenant) as sdk:
        probe = await sdk.files.create(file=("probe.jsonl", _jsonl([
            {"custom_id": f"p-{i}", "method": "POST", "url": "/v1/completions", "body": PROBE} for i in range(20)])),
            purpose="batch")
        with pytest.raises(openai.ConflictError) as refused:
            await sdk.batches.create(input_file_id=probe.id, endpoint="/v1/completions", completion_window="24h")
        assert refused.value.code == "storage_quota_exceeded" and refused.value.param == "input_file_id"
        assert await db.fetchval("SELECT count(*) FROM batches WHERE tenant_id = $1", tenant.tenant_id) == 0
        before = await db.fetchrow(usage, tenant.tenant_id)
        batch = await _submit(sdk, [_line(f"o-{i}") for i in range(3)])
        held = await db.fetchrow("SELECT s.bytes, s.objects, b.output_reserved_bytes FROM tenant_storage s, batches b "
                                 "WHERE s.tenant_id = $1 AND s.kind = 'files' AND b.id = $2", tenant.tenant_id, batch.id)
        reserved = held["output_reserved_bytes"]  # read with the usage: validation may adjust it meanwhile
        input_bytes = (await sdk.files.retrieve(batch.input_file_id)).bytes
        done = await _finished(sdk, batch.id)
        output = await sdk.files.retrieve(done.output_file_id)
    after = await db.fetchrow(usage, tenant.tenant_id)
    assert reserved > 0 and held["bytes"] == before["bytes"] + input_bytes + reserved
    assert held["objects"] == before["objects"] + 1 + 2  # the input file, and room for two result files
    assert done.status == "completed" and done.error_file_id is None and output.bytes <= reserved
    assert (after["bytes"], after["objects"]) == (held["bytes"] - reserved + output.bytes, held["objects"] - 2 + 1)


# ---- lines the engine would refuse (issue 28, finding 9) --------------------------------------------

async def test_lines_the_engine_would_refuse_are_named_at_validation_and_cost_nothing(platform, db, tenant,
                                                                                    vocab_model):
    """The synchronous routes' own checks before admission run on every line: an output cap past the
    context, greedy sampling with n > 1, an empty stop, top_logprobs without logprobs, min_tokens past the
    output cap, token ids outside the model's vocabulary … each named by line, and nothing reaches a worker
    or the ledger."""
    vocab = {"model": vocab_model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    lines: list[object] = [
        _line("ok"),
        _line("too-long", max_tokens=5000),
        _line("greedy-n", n=2, temperature=0),
        _line("empty-stop", stop=[""]),
        _line("top-logprobs", top_logprobs=3),
        _line("min-over-max", max_tokens=2, min_tokens=10),
        {"custom_id": "vocab", "method": "POST", "url": "/v1/chat/completions",
         "body": {**vocab, "stop_token_ids": [5000]}},
    ]
    async with _sdk(platform.url, tenant) as sdk:
        batch = await _submit(sdk, lines)
        done = await _finished(sdk, batch.id)
    assert done.status == "failed", done
    errors = {error.line: error for error in done.errors.data}
    assert {line: error.param for line, error in errors.items()} == {
        2: "body.max_tokens", 3: "body.n", 4: "body.stop", 5: "body.top_logprobs", 6: "body.min_tokens",
        7: "body.stop_token_ids"}, done.errors.data
    assert errors[2].code == "context_length_exceeded" and errors[2].message.startswith("line 2: max_tokens is 5000")
    assert await db.fetchval("SELECT count(*) FROM batch_lines WHERE batch_id = $1", batch.id) == 0
    await platform.app.state.services.ledger.drain()
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE batch_id = $1", batch.id) == 0
    assert not any(worker.behaviour.received for worker in platform.workers)


async def test_three_thousand_lines_the_engine_would_refuse_make_no_worker_call(platform, db, tenant):
    """The issue's probe: 3,000 lines asking for more output than the model's context. They cost nothing
    before either, but made 3,000 worker calls and ledger rows; now validation refuses the file."""
    async with _sdk(platform.url, tenant) as sdk:
        batch = await _submit(sdk, [_line(f"r-{i}", max_tokens=5000) for i in range(3000)])
        done = await _finished(sdk, batch.id)
    assert done.status == "failed" and done.errors.data[-1].code == "too_many_errors"
    assert {error.param for error in done.errors.data[:-1]} == {"body.max_tokens"}
    await platform.app.state.services.ledger.drain()
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE batch_id = $1", batch.id) == 0
    assert not any(worker.behaviour.received for worker in platform.workers)


async def test_validation_holds_the_lines_own_bound_and_refuses_what_no_longer_fits(start_gateway, platform, db,
                                                                                     tenant):
    """Validation replaces the create's estimate with the lines' own bounds. A batch that held less than
    its lines need (as one created before outputs were held: simulated by giving its room back) takes the
    difference then, or — the quota full meanwhile — fails validation naming input_file_id, and every byte
    it held goes back."""
    blobs = str(platform.app.state.services.settings.resolved_blob_dir)
    quota = 200_000
    gateway = await start_gateway(TENANT_MAX_FILE_BYTES=str(quota), BATCH_DISPATCH="false", BLOB_DIR=blobs)
    usage = "SELECT bytes, objects FROM tenant_storage WHERE tenant_id = $1 AND kind = 'files'"
    dispatcher = platform.app.state.services.dispatcher
    await dispatcher.close()
    try:
        async with _sdk(gateway.url, tenant) as sdk:
            batch = await _submit(sdk, [_line(f"v-{i}") for i in range(3)])
            reserved = await db.fetchval("SELECT output_reserved_bytes FROM batches WHERE id = $1", batch.id)
            await db.execute("UPDATE batches SET output_reserved_bytes = 0 WHERE id = $1", batch.id)
            await db.execute("UPDATE tenant_storage SET bytes = bytes - $2 WHERE tenant_id = $1 AND kind = 'files'",
                             tenant.tenant_id, reserved)
            files_only = await db.fetchrow(usage, tenant.tenant_id)
            await sdk.files.create(file=("filler.jsonl", b"x" * (quota - files_only["bytes"] - reserved // 2)),
                                   purpose="batch")
            filled = await db.fetchrow(usage, tenant.tenant_id)
            assert await gateway.services.dispatcher.validate_one()  # a dispatcher under the same quota
            done = await sdk.batches.retrieve(batch.id)
        after = await db.fetchrow(usage, tenant.tenant_id)
    finally:
        dispatcher.start()
    assert done.status == "failed" and [(e.code, e.param) for e in done.errors.data] == [
        ("storage_quota_exceeded", "input_file_id")], done.errors
    assert (after["bytes"], after["objects"]) == (filled["bytes"], filled["objects"] - 2)  # its two files' room back
