"""Requests, batch lines and fine-tuning jobs are separate lines wherever usage is shown: /v1/usage rows
(``kind``), its CSV, invoice lines; and a rollup rebuilt from the ledger says the same.

The fine-tuning row is the one a trainer writes (endpoint ``fine_tuning``, trained tokens as prompt
tokens), recorded here through the gateway's ledger writer; the trainer's own path is tested in
tests/integration/test_fine_tuning.py.
"""

from __future__ import annotations

import datetime as dt
import json

import httpx
import openai
from lorafleet.billing.ledger_row import Endpoint, LedgerRow, Outcome
from lorafleet.billing.rollups import rebuild_rollups
from lorafleet.core import ids

from tests.helpers import close_this_month, eventually, set_price, wait_rows
from tests.inprocess.conftest import STUB_MODEL

PROMPT, COMPLETION, TRAINING = 1_000_003, 2_000_001, 3_000_007


def _batch_line(custom_id: str, messages: list[dict]) -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": STUB_MODEL, "messages": messages, "max_tokens": 2}}).encode() + b"\n"


async def test_each_kind_of_usage_is_its_own_line(platform, db, tenant):
    price = await set_price(platform, platform.env, STUB_MODEL, PROMPT, COMPLETION, batch_discount_bps=2500)
    async with openai.AsyncOpenAI(base_url=platform.url + "/v1", api_key=tenant.secret, max_retries=0) as sdk:
        await sdk.chat.completions.create(model=STUB_MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2)
        file = await sdk.files.create(file=("b.jsonl", _batch_line("a", [{"role": "user", "content": "x"}])),
                                      purpose="batch")
        batch = await sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                         completion_window="24h")
        await eventually(lambda: sdk.batches.retrieve(batch.id), lambda b: b.status == "completed",
                         what="the batch done")
    now = dt.datetime.now(dt.UTC)
    platform.app.state.services.ledger.record(LedgerRow(
        request_id=ids.request_id(), tenant_id=tenant.tenant_id, api_key_id=tenant.key_id,
        base_model_id=platform.base_model_id, model=STUB_MODEL, endpoint=Endpoint.FINE_TUNING, outcome=Outcome.SUCCESS,
        http_status=200, streamed=False, prompt_tokens=1000, completion_tokens=0, worker_url=None, started_at=now,
        finished_at=now, ttft_ms=None, duration_ms=1, cost_pico_usd=1000 * TRAINING, price_id=price["id"]))
    await wait_rows(db, tenant.tenant_id, 3)
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        report = (await http.get("/v1/usage", params={"bucket": "day"})).json()
        csv = (await http.get("/v1/usage", params={"bucket": "day", "format": "csv"})).text
    kinds = {row["kind"]: row for row in report["data"]}
    assert sorted(kinds) == ["batch", "fine_tuning", "requests"]
    assert kinds["fine_tuning"]["prompt_tokens"] == 1000 and kinds["fine_tuning"]["cost_pico_usd"] == 1000 * TRAINING
    assert (kinds["batch"]["requests"], kinds["requests"]["requests"]) == (1, 1)
    assert report["totals"]["requests"] == 3
    assert csv.splitlines()[0].split(",")[1] == "kind"
    assert sorted(line.split(",")[1] for line in csv.splitlines()[1:]) == ["batch", "fine_tuning", "requests"]

    # Rebuilt from the ledger, the rollups say the same.
    await rebuild_rollups(db)
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        assert (await http.get("/v1/usage", params={"bucket": "day"})).json()["data"] == report["data"]

    invoice_id = await close_this_month(db, tenant.tenant_id)
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers) as http:
        invoice = (await http.get(f"/v1/invoices/{invoice_id}")).json()
    lines = [line for line in invoice["lines"] if line["kind"] == "usage"]
    assert len(lines) == 3
    batch_lines = [line for line in lines if line["batch_discount_bps"] is not None]
    assert len(batch_lines) == 1 and batch_lines[0]["batch_discount_bps"] == 2500
    assert "batch" in batch_lines[0]["description"] and "batch discount 25%" in batch_lines[0]["description"]
    assert any("fine-tuning" in line["description"] for line in lines)
    assert sum(line["amount_pico_usd"] for line in lines) == sum(row["cost_pico_usd"] for row in report["data"])


async def test_a_batch_whose_every_line_fails_has_no_output_file(platform, tenant):
    """Every line refused when it runs (the engine answers 400: what no check before admission can know)."""
    for worker in platform.workers:
        worker.behaviour.fail_next, worker.behaviour.fail_status = 3, 400
    async with openai.AsyncOpenAI(base_url=platform.url + "/v1", api_key=tenant.secret, max_retries=0) as sdk:
        file = await sdk.files.create(file=("b.jsonl", b"".join(
            _batch_line(f"f-{i}", [{"role": "user", "content": "x"}]) for i in range(3))), purpose="batch")
        batch = await sdk.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                         completion_window="24h")
        done = await eventually(lambda: sdk.batches.retrieve(batch.id), lambda b: b.status == "completed",
                                what="the batch done")
        assert done.output_file_id is None and done.error_file_id is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (0, 3)
        errors = [json.loads(line) for line in (await sdk.files.content(done.error_file_id)).content.splitlines()]
    assert sorted(line["custom_id"] for line in errors) == ["f-0", "f-1", "f-2"]
    for line in errors:
        assert line["response"]["status_code"] == 400 and line["response"]["body"]["error"]["message"]
        assert line["error"]["message"] == line["response"]["body"]["error"]["message"]
