"""Webhooks through the official SDK, delivered to a real HTTP receiver this test starts.

Every event type arrives and ``client.webhooks.unwrap`` accepts it; a receiver answering 500 twice
gets the event a third time with the same id; a change rolled back emits nothing; deliveries a
stopped gateway left behind are sent by the next one; private and link-local receivers are refused
by a gateway that does not allow them; a rotated secret keeps signing for the overlap it was given.

Events of states this tier cannot reach by itself (a batch expired, a job that trained — there is no
trainer here) are written as the trainer and the dispatcher write them: one UPDATE of the row's
status, which is what emits the event (migrations/0024).
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field

import httpx
import openai
import pytest
from aiohttp import web

from tests.helpers import TenantKey, eventually
from tests.inprocess.conftest import STUB_MODEL

ALL_TYPES = ["batch.completed", "batch.failed", "batch.expired", "batch.cancelled",
             "fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]
HOLD = "webhook-test-hold"


@dataclass
class Receiver:
    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answers to give, in order (then 200)
    delay: float = 0.0
    hits: dict[str, int] = field(default_factory=dict)

    def events(self) -> list[dict]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
async def receiver():
    state = Receiver("")

    async def hook(request: web.Request) -> web.Response:
        state.hits[request.path] = state.hits.get(request.path, 0) + 1
        if request.path == "/redirect":
            return web.Response(status=302, headers={"Location": "/elsewhere"})
        body = await request.read()
        if state.delay:
            await asyncio.sleep(state.delay)
        state.received.append(({k.lower(): v for k, v in request.headers.items()}, body))
        return web.Response(status=state.statuses.pop(0) if state.statuses else 200, text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state.url = f"http://127.0.0.1:{port}/hooks"
    yield state
    await runner.cleanup()


def _sdk(url: str, tenant: TenantKey) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=tenant.secret, max_retries=0)


async def _file(sdk: openai.AsyncOpenAI, purpose: str, content: str) -> str:
    return (await sdk.files.create(file=("f.jsonl", content.encode()), purpose=purpose)).id


def _line(text: str) -> str:
    return json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": STUB_MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 2}})


async def test_every_event_type_arrives_signed_and_the_sdk_unwraps_it(platform, tenant, db, receiver):
    sdk = _sdk(platform.url, tenant)
    endpoint = await sdk.webhooks.create(url=receiver.url, name="all", event_types=ALL_TYPES)
    secret = endpoint.signing_secret
    assert secret.startswith("whsec_") and endpoint.event_types == ALL_TYPES
    shown = await sdk.webhooks.retrieve(endpoint.id)
    assert secret not in shown.model_dump_json() and shown.signing_secret_hint.endswith(secret[-4:])
    assert [e.id async for e in sdk.webhooks.list()] == [endpoint.id]

    completed = await sdk.batches.create(input_file_id=await _file(sdk, "batch", _line("x")),
                                         endpoint="/v1/chat/completions", completion_window="24h")
    failed = await sdk.batches.create(input_file_id=await _file(sdk, "batch", "not json\n"),
                                      endpoint="/v1/chat/completions", completion_window="24h")
    for worker in platform.workers:
        worker.behaviour.hold_marker = HOLD
        worker.behaviour.release.clear()
    try:
        held = await sdk.batches.create(input_file_id=await _file(sdk, "batch", _line(HOLD)),
                                        endpoint="/v1/chat/completions", completion_window="24h")
        await sdk.batches.cancel(held.id)
        expired = await sdk.batches.create(input_file_id=await _file(sdk, "batch", _line(HOLD)),
                                           endpoint="/v1/chat/completions", completion_window="24h")
        # What the dispatcher writes when a batch's window passes with a line still running.
        await db.execute("UPDATE batches SET status = 'expired', expired_at = now() WHERE id = $1", expired.id)
    finally:
        for worker in platform.workers:
            worker.behaviour.hold_marker = None
            worker.behaviour.release.set()
    training = await _file(sdk, "fine-tune", '{"messages": [{"role": "user", "content": "x"}]}\n')
    jobs = [await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=training) for _ in range(3)]
    await sdk.fine_tuning.jobs.cancel(jobs[2].id)
    # What the trainer writes when a training ends.
    await db.execute("UPDATE fine_tuning_jobs SET status = 'succeeded' WHERE id = $1", jobs[0].id)
    await db.execute("UPDATE fine_tuning_jobs SET status = 'failed' WHERE id = $1", jobs[1].id)

    expected = {("batch.completed", completed.id), ("batch.failed", failed.id), ("batch.cancelled", held.id),
                ("batch.expired", expired.id), ("fine_tuning.job.succeeded", jobs[0].id),
                ("fine_tuning.job.failed", jobs[1].id), ("fine_tuning.job.cancelled", jobs[2].id)}

    async def arrived() -> set[tuple[str, str]]:
        return {(e["type"], e["data"]["id"]) for e in receiver.events()}

    await eventually(arrived, lambda got: expected <= got, timeout=30, what="every event type delivered")
    for headers, body in receiver.received:
        event = sdk.webhooks.unwrap(body, headers, secret=secret)  # verifies the Standard Webhooks signature
        assert headers["webhook-id"] == event.id and (event.type, event.data.id) in expected
        with pytest.raises(openai.InvalidWebhookSignatureError):
            sdk.webhooks.unwrap(body, headers, secret="whsec_" + "A" * 44)
    assert len(receiver.received) == len(expected)  # each once (a test endpoint subscribed to all)


async def test_a_failing_receiver_gets_the_same_event_again_until_it_answers(platform, tenant, db, receiver):
    sdk = _sdk(platform.url, tenant)
    endpoint = await sdk.webhooks.create(url=receiver.url, name="flaky", event_types=["batch.completed"])
    receiver.statuses = [500, 500]
    batch = await sdk.batches.create(input_file_id=await _file(sdk, "batch", _line("x")),
                                     endpoint="/v1/chat/completions", completion_window="24h")
    await eventually(lambda: asyncio.sleep(0, receiver.received), lambda got: len(got) >= 3, timeout=30,
                     what="the third attempt")
    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    assert len(ids) == 1 and len(receiver.received) == 3, receiver.received
    assert sdk.webhooks.unwrap(receiver.received[2][1], receiver.received[2][0],
                               secret=endpoint.signing_secret).data.id == batch.id
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        log = await eventually(lambda: http.get(f"/v1/webhook_endpoints/{endpoint.id}/deliveries"),
                               lambda answer: answer.json()["data"][0]["status"] == "delivered",
                               what="the delivery recorded as delivered")
        delivery = log.json()["data"][0]
        assert (delivery["attempts"], delivery["last_status_code"], delivery["event_id"]) == (3, 200, ids.pop())
        codes = [r["status_code"] for r in await db.fetch(
            "SELECT status_code FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt", delivery["id"])]
        assert codes == [500, 500, 200]
        replayed = await http.post(f"/v1/webhook_endpoints/{endpoint.id}/deliveries/{delivery['id']}/replay")
        assert replayed.status_code == 202, replayed.text
        await eventually(lambda: asyncio.sleep(0, receiver.received), lambda got: len(got) == 4, what="the replay")
        assert receiver.received[3][0]["webhook-id"] == delivery["event_id"]  # the same id: receivers deduplicate


async def test_a_change_rolled_back_emits_nothing(platform, tenant, db, receiver):
    sdk = _sdk(platform.url, tenant)
    await sdk.webhooks.create(url=receiver.url, name="tx", event_types=["fine_tuning.job.succeeded"])
    training = await _file(sdk, "fine-tune", '{"messages": [{"role": "user", "content": "x"}]}\n')
    job = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=training)
    async with db.acquire() as connection:
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("UPDATE fine_tuning_jobs SET status = 'succeeded' WHERE id = $1", job.id)
        assert await connection.fetchval("SELECT count(*) FROM webhook_events WHERE data->>'id' = $1", job.id) == 1
        await transaction.rollback()
    assert await db.fetchval("SELECT count(*) FROM webhook_events WHERE data->>'id' = $1", job.id) == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id "
                             "WHERE e.data->>'id' = $1", job.id) == 0
    await sdk.fine_tuning.jobs.cancel(job.id)


async def test_deliveries_a_stopped_gateway_left_are_sent_by_the_next(platform, tenant, db, receiver, start_gateway):
    services = platform.app.state.services
    await services.webhook_deliverer.close()  # this tier's gateway stops delivering: as if it were killed
    try:
        sdk = _sdk(platform.url, tenant)
        await sdk.webhooks.create(url=receiver.url, name="restart", event_types=["fine_tuning.job.cancelled"])
        training = await _file(sdk, "fine-tune", '{"messages": [{"role": "user", "content": "x"}]}\n')
        job = await sdk.fine_tuning.jobs.create(model=STUB_MODEL, training_file=training)
        await sdk.fine_tuning.jobs.cancel(job.id)
        # It had leased the delivery and died mid-send: the lease runs out, then the next gateway sends it.
        leased = await db.execute(
            "UPDATE webhook_deliveries d SET lease_owner = 'gw_dead', lease_until = now() + interval '1 second' "
            "FROM webhook_events e WHERE e.id = d.event_id AND e.data->>'id' = $1", job.id)
        assert leased == "UPDATE 1"
        assert receiver.received == []
        await start_gateway(WEBHOOK_ALLOW_PRIVATE="true", WEBHOOK_POLL_SECONDS="0.1")
        await eventually(lambda: asyncio.sleep(0, receiver.received), lambda got: len(got) == 1, timeout=20,
                         what="the delivery sent by the restarted gateway")
        assert json.loads(receiver.received[0][1])["data"]["id"] == job.id
    finally:
        services.webhook_deliverer.start()


async def test_private_and_link_local_receivers_are_refused_unless_allowed(platform, tenant, receiver, start_gateway):
    guarded = await start_gateway(WEBHOOK_TIMEOUT_SECONDS="1")  # LORAFLEET_WEBHOOK_ALLOW_PRIVATE unset
    port = receiver.url.split(":")[2].split("/")[0]
    async with httpx.AsyncClient(base_url=guarded.url, headers=tenant.headers, timeout=30) as http:
        for url, why in ((receiver.url, "loopback"), (f"http://localhost:{port}/hooks", "loopback"),
                         ("http://169.254.169.254/latest/meta-data", "link-local"), ("http://10.0.0.1/x", "private")):
            made = await http.post("/v1/webhook_endpoints", json={"url": url, "name": "n",
                                                                  "event_types": ["batch.completed"]})
            assert made.status_code == 200, made.text
            sent = await http.post(f"/v1/webhook_endpoints/{made.json()['id']}/test",
                                   json={"event_type": "batch.completed"})
            assert sent.status_code == 400, sent.text
            error = sent.json()["error"]
            assert error["code"] == "webhook_delivery_failed" and why in error["message"], error
    assert receiver.received == []
    allowed = await _sdk(platform.url, tenant).webhooks.create(url=receiver.url, name="ok",
                                                               event_types=["batch.completed"])
    result = await _sdk(platform.url, tenant).webhooks.test(allowed.id, event_type="batch.completed")
    assert (result.status_code, result.success, result.webhook_endpoint_id) == (200, True, allowed.id)


async def test_no_redirects_and_bounded_time(platform, tenant, receiver, start_gateway):
    sdk = _sdk(platform.url, tenant)
    base = receiver.url.rsplit("/", 1)[0]
    redirecting = await sdk.webhooks.create(url=base + "/redirect", name="r", event_types=["batch.completed"])
    result = await sdk.webhooks.test(redirecting.id, event_type="batch.completed")
    assert result.status_code == 302 and "/elsewhere" not in receiver.hits
    slow = await start_gateway(WEBHOOK_ALLOW_PRIVATE="true", WEBHOOK_TIMEOUT_SECONDS="0.3")
    receiver.delay = 2.0
    async with httpx.AsyncClient(base_url=slow.url, headers=tenant.headers, timeout=30) as http:
        sent = await http.post(f"/v1/webhook_endpoints/{redirecting.id}", json={"url": receiver.url})
        assert sent.status_code == 200, sent.text
        timed_out = await http.post(f"/v1/webhook_endpoints/{redirecting.id}/test", json={"event_type": "batch.completed"})
    assert timed_out.status_code == 400 and "Timeout" in timed_out.json()["error"]["message"], timed_out.text


async def test_a_rotated_secret_keeps_signing_for_the_overlap_it_was_given(platform, tenant, receiver):
    sdk = _sdk(platform.url, tenant)
    endpoint = await sdk.webhooks.create(url=receiver.url, name="rot", event_types=["batch.completed"])
    old = endpoint.signing_secret
    rotated = await sdk.webhooks.rotate_secret(endpoint.id, keep_old_secret_active_for_24_hours=True)
    assert rotated.signing_secret != old and rotated.updated_at >= endpoint.updated_at
    await sdk.webhooks.test(endpoint.id, event_type="batch.completed")
    headers, body = receiver.received[-1]
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (old, rotated.signing_secret):
        assert sdk.webhooks.unwrap(body, headers, secret=secret).type == "batch.completed"
    again = await sdk.webhooks.rotate_secret(endpoint.id)  # no overlap: the one before is dead at once
    await sdk.webhooks.test(endpoint.id, event_type="batch.completed")
    headers, body = receiver.received[-1]
    assert sdk.webhooks.unwrap(body, headers, secret=again.signing_secret).type == "batch.completed"
    for dead in (old, rotated.signing_secret):
        with pytest.raises(openai.InvalidWebhookSignatureError):
            sdk.webhooks.unwrap(body, headers, secret=dead)


async def test_bad_endpoints_are_refused_precisely(platform, tenant, other_tenant):
    sdk = _sdk(platform.url, tenant)
    for kwargs, param, code in (
            ({"url": "ftp://example.com/x", "name": "n", "event_types": ["batch.completed"]}, "url", "invalid_url"),
            ({"url": "https://u:p@example.com/x", "name": "n", "event_types": ["batch.completed"]}, "url",
             "invalid_url"),
            ({"url": "https://example.com/x", "name": "n", "event_types": ["response.completed"]}, "event_types",
             "unsupported_parameter")):
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.webhooks.create(**kwargs)
        assert (refused.value.body["param"], refused.value.body["code"]) == (param, code), refused.value.body
    async with httpx.AsyncClient(base_url=platform.url, headers=tenant.headers, timeout=30) as http:
        unknown = await http.post("/v1/webhook_endpoints", json={"url": "https://example.com/x", "name": "n",
                                                                 "event_types": ["batch.completed"], "secret": "x"})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "secret", unknown.text
    theirs = await _sdk(platform.url, other_tenant).webhooks.create(url="https://example.com/x", name="theirs",
                                                                   event_types=["batch.completed"])
    with pytest.raises(openai.NotFoundError):
        await sdk.webhooks.retrieve(theirs.id)
    deleted = await _sdk(platform.url, other_tenant).webhooks.delete(theirs.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (theirs.id, True, "webhook_endpoint.deleted")
    assert (await sdk.webhooks.event_types.list()).data == ALL_TYPES
