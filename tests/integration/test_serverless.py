"""Scale to zero and back: an idle worker releases its engine; a request wakes it and waits, unbilled for the wait.

The worker serves SmolLM2's weights as ``sleepy-smollm2`` and sleeps after a few idle seconds.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import psutil
import pytest
from lorafleet.devtools.services import Service, start_worker

from tests.helpers import eventually, ledger_row, wait_rows

pytestmark = pytest.mark.engine

SLEEPY = "sleepy-smollm2"
IDLE_SECONDS = 4


@pytest.fixture(scope="module")
def sleepy(base_env: dict[str, str], log_dir, model_path) -> Iterator[Service]:
    service = start_worker(dict(base_env, LORAFLEET_MODEL_NAME=SLEEPY, LORAFLEET_MODEL_PATH=str(model_path),
                                LORAFLEET_WORKER_IDLE_SECONDS=str(IDLE_SECONDS)), log_dir)
    try:
        yield service
    finally:
        service.stop()


def _rss(service: Service) -> int:
    total = 0
    for process in [psutil.Process(service.process.pid), *psutil.Process(service.process.pid).children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.Error:  # gone, or a zombie: holds no memory
            continue
    return total


def _engines(service: Service) -> list[str]:
    """The worker's live engine processes (vLLM's server, engine core, workers)."""
    found = []
    for child in psutil.Process(service.process.pid).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and ("vllm" in " ".join(child.cmdline())
                                                           or child.name().startswith("VLLM")):
                found.append(child.name())
        except psutil.Error:
            continue
    return found


async def _asleep(db, gateway, sleepy: Service) -> None:
    await eventually(lambda: db.fetchval("SELECT state FROM workers WHERE url = $1", sleepy.url),
                     lambda state: state == "asleep", timeout=90, interval=0.2, what="the worker asleep")

    async def workers_asleep() -> str:
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            return (await http.get("/metrics")).text

    await eventually(workers_asleep, lambda text: f'lorafleet_model_workers{{base_model="{SLEEPY}",state="asleep"}} 1.0'
                     in text, timeout=10, what="/metrics reporting it asleep")


async def test_an_idle_worker_releases_its_engine_and_the_next_request_wakes_it(sleepy, gateway, db, make_key):
    key = await make_key()
    awake = _rss(sleepy)
    await _asleep(db, gateway, sleepy)

    async def engines() -> list[str]:
        return _engines(sleepy)

    await eventually(engines, lambda found: not found, timeout=30, what="no engine process left while asleep")
    asleep = _rss(sleepy)
    assert asleep < awake / 4, f"the engine's memory went back to the machine ({awake} → {asleep} bytes)"
    async with httpx.AsyncClient(base_url=gateway.url, headers=key.headers, timeout=300) as http:
        signals = (await http.get(f"/autoscaling/{SLEEPY}")).json()
        assert signals["asleep_workers"] == 1 and signals["desired_replicas"] == 0
        response = await http.post("/v1/completions", json={"model": SLEEPY, "prompt": "Once upon", "max_tokens": 8})
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    row = await ledger_row(db, response.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert row["outcome"] == "success" and row["ttft_ms"] > 1000, "it waited for the wake-up"
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE request_id = $1",
                             response.headers["x-request-id"]) == 1


async def test_two_hundred_requests_arriving_while_asleep_all_succeed_after_one_wake_up(sleepy, gateway, db, make_key):
    key = await make_key()
    await _asleep(db, gateway, sleepy)
    wakes_before = len(re.findall(r'"event":"worker_waking"', sleepy.log_text()))
    body = {"model": SLEEPY, "prompt": "Hi", "max_tokens": 2}
    limits = httpx.Limits(max_connections=250)
    async with httpx.AsyncClient(base_url=gateway.url, headers=key.headers, timeout=600, limits=limits) as http:
        async def one(index: int) -> int:
            if index % 4 == 0:  # some are streams: held with keep-alive comments, then served
                async with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
                    lines = [line async for line in response.aiter_lines()]
                    return response.status_code if "data: [DONE]" in lines else 599
            return (await http.post("/v1/completions", json=body)).status_code

        statuses = await asyncio.gather(*(one(i) for i in range(200)))
    assert statuses.count(200) == 200, sorted(set(statuses))
    assert len(re.findall(r'"event":"worker_waking"', sleepy.log_text())) == wakes_before + 1, "one wake-up for all"
    await wait_rows(db, key.tenant_id, 200)  # the writer inserts in batches: wait for the last one, then count
    assert await db.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", key.tenant_id) == 200


async def test_a_request_held_past_the_bound_gets_503_with_retry_after_and_costs_nothing(sleepy, gateways, gateway, db,
                                                                                        make_key):
    key = await make_key()
    await _asleep(db, gateway, sleepy)
    impatient = await asyncio.to_thread(gateways.start, "/readyz", LORAFLEET_WAKE_TIMEOUT_SECONDS="1")
    async with httpx.AsyncClient(base_url=impatient.url, headers=key.headers, timeout=60) as http:
        response = await http.post("/v1/completions", json={"model": SLEEPY, "prompt": "Hi", "max_tokens": 2})
        async with http.stream("POST", "/v1/completions", json={"model": SLEEPY, "prompt": "Hi", "max_tokens": 2,
                                                               "stream": True}) as streamed:
            events = [line async for line in streamed.aiter_lines() if line.startswith("data: ")]
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"]["code"] == "no_worker_ready"
    row = await ledger_row(db, response.headers["x-request-id"])
    assert (row["outcome"], row["cost_pico_usd"], row["completion_tokens"]) == ("unavailable", 0, 0)
    assert '"no_worker_ready"' in events[-1], "a held stream ends with the same error, as an event"
