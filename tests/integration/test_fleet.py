"""Two real vLLM CPU workers for one base model behind the gateway: residency-aware placement, failover, drain.

The workers serve SmolLM2's weights under a base model name of their own (``fleet-smollm2``), each
engine on its own core, so the session's other worker and tests are not in the way.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator

import httpx
import psutil
import pytest
from lorafleet.adapters.architecture import model_architecture
from lorafleet.devtools.services import Service, start_worker
from lorafleet.gateway.fleet.placement import rendezvous_weigher
from lorafleet.gateway.fleet.registry import worker_label

from tests.adapter_factory import lora_config, write_adapter
from tests.helpers import eventually, ledger_row

pytestmark = pytest.mark.engine

FLEET_MODEL = "fleet-smollm2"


@pytest.fixture(scope="module")
def fleet(base_env: dict[str, str], log_dir, model_path) -> Iterator[list[Service]]:
    env = dict(base_env, LORAFLEET_MODEL_NAME=FLEET_MODEL, LORAFLEET_MODEL_PATH=str(model_path),
               LORAFLEET_WORKER_DRAIN_SECONDS="60")
    workers: list[Service] = []
    try:
        for core in (0, 1):
            workers.append(start_worker(dict(env, VLLM_CPU_OMP_THREADS_BIND=str(core)), log_dir))
        yield workers
    finally:
        for worker in workers:
            worker.stop()


@pytest.fixture(scope="module")
def fleet_adapters(tmp_path_factory, model_path) -> list:
    arch = model_architecture(model_path)
    root = tmp_path_factory.mktemp("fleet-adapters")
    return [write_adapter(root / f"a{i}", arch=arch, rank=8, seed=100 + i,
                          config=lora_config(8, ["q_proj", "v_proj"], base=FLEET_MODEL)) for i in range(8)]


async def _upload(gateway, key, name: str, folder) -> dict:
    files = [("file", (path.name, path.read_bytes())) for path in sorted(folder.iterdir())]
    async with httpx.AsyncClient(base_url=gateway.url, headers=key.headers, timeout=120) as http:
        response = await http.post("/v1/adapters", data={"name": name, "base_model": FLEET_MODEL}, files=files)
    assert response.status_code == 201, response.text
    return response.json()


async def _ready_in_gateway(gateway, admin_token: str, count: int) -> None:
    async def ready() -> int:
        async with httpx.AsyncClient(base_url=gateway.url) as http:
            workers = (await http.get("/admin/workers", headers={"Authorization": f"Bearer {admin_token}"})).json()
        return sum(1 for w in workers["data"] if w["base_model"] == FLEET_MODEL and w["ready"] and w["state"] == "ready")

    await eventually(ready, lambda n: n >= count, timeout=60, what=f"{count} ready fleet workers")


async def _complete(http: httpx.AsyncClient, model: str, max_tokens: int = 4) -> str:
    response = await http.post("/v1/completions", json={"model": model, "prompt": "Once upon a time",
                                                        "max_tokens": max_tokens, "temperature": 0})
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


@pytest.fixture(scope="module")
async def uploaded(fleet, gateway, base_env, make_key, fleet_adapters):
    key = await make_key()
    adapters = [await _upload(gateway, key, f"fleet-{i}", folder) for i, folder in enumerate(fleet_adapters)]
    await _ready_in_gateway(gateway, base_env["LORAFLEET_ADMIN_TOKEN"], 2)
    return key, adapters


async def test_each_adapter_stays_on_one_worker_and_the_two_split_them(gateway, db, uploaded):
    key, adapters = uploaded
    placed: dict[str, set[str]] = {}
    async with httpx.AsyncClient(base_url=gateway.url, headers=key.headers, timeout=120) as http:
        for adapter in adapters:
            for _ in range(3):
                row = await ledger_row(db, await _complete(http, adapter["name"]))
                placed.setdefault(adapter["name"], set()).add(row["worker_url"])
    assert all(len(workers) == 1 for workers in placed.values()), placed
    assert len(set().union(*placed.values())) == 2, "the two workers split the adapters"


async def test_a_hot_adapter_gains_a_second_replica(gateway, db, uploaded):
    key, adapters = uploaded
    hot = adapters[0]["name"]
    async with httpx.AsyncClient(base_url=gateway.url, headers=key.headers, timeout=300) as http:
        request_ids = await asyncio.gather(*(_complete(http, hot, max_tokens=48) for _ in range(40)))
    workers = {(await ledger_row(db, request_id))["worker_url"] for request_id in request_ids}
    assert len(workers) == 2, "40 concurrent requests for one adapter spread over both workers"


async def _worker_state(worker: Service) -> dict:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{worker.url}/lorafleet/state", headers=worker.internal_headers)).json()


async def test_a_cold_adapter_goes_to_the_worker_with_room(gateway, db, fleet, uploaded, model_path, tmp_path):
    """Fill one worker's four LoRA slots with running streams; a never-used adapter whose home it is goes to the other."""
    key, _ = uploaded
    urls = [worker.url for worker in fleet]

    def home(adapter_id: str) -> str:
        weigh = rendezvous_weigher(adapter_id)
        return max(urls, key=lambda url: weigh(_Named(worker_label(url))))

    crowded = urls[0]
    fresh = []  # adapters resident nowhere whose home (rendezvous first) is the crowded worker: four to fill
    for seed in range(40):  # its slots, one to place while they are full
        candidate = await _upload(gateway, key, f"home-{seed}", write_adapter(
            tmp_path / f"home-{seed}", arch=model_architecture(model_path), rank=8, seed=500 + seed,
            config=lora_config(8, ["q_proj", "v_proj"], base=FLEET_MODEL)))
        if home(candidate["id"]) == crowded:
            fresh.append(candidate["name"])
            if len(fresh) == 5:
                break
    assert len(fresh) == 5
    long_streams, cold = fresh[:4], fresh[4]
    body = {"prompt": "Once", "max_tokens": 400, "ignore_eos": True, "stream": True}
    async with httpx.AsyncClient(base_url=gateway.url, headers=key.headers, timeout=300) as http:
        started = asyncio.Event()
        running = 0

        async def stream(name: str) -> None:
            nonlocal running
            async with http.stream("POST", "/v1/completions", json={"model": name, **body}) as response:
                counted = False
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and not counted:
                        counted = True
                        running += 1
                        if running >= 4:
                            started.set()

        tasks = [asyncio.create_task(stream(name)) for name in long_streams]
        await asyncio.wait_for(started.wait(), 120)
        state = await _worker_state(fleet[0])
        assert state["in_flight"] == 4, "the four streams run on the crowded worker, filling its four slots"
        row = await ledger_row(db, await _complete(http, cold))
        for task in tasks:
            task.cancel()
    assert row["worker_url"] != crowded, "never a cold adapter where the slots are full when the other has room"


class _Named:
    def __init__(self, worker_id: str) -> None:
        self.id = worker_id


async def test_an_engine_killed_under_traffic_fails_over_and_the_worker_rejoins(gateway, db, base_env, fleet,
                                                                               uploaded):
    key, _ = uploaded
    stream_body = {"model": FLEET_MODEL, "prompt": "Once", "max_tokens": 600, "ignore_eos": True, "stream": True,
                   "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    async with httpx.AsyncClient(base_url=gateway.url, headers=key.headers, timeout=300) as http:
        streams: list[tuple[str, list]] = []

        async def stream() -> None:
            events: list = []
            async with http.stream("POST", "/v1/completions", json=stream_body) as response:
                streams.append((response.headers["x-request-id"], events))
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        events.append(json.loads(line[6:]))

        async def chunks() -> int:
            return sum(len(events) for _, events in streams)

        in_flight = [asyncio.create_task(stream()) for _ in range(4)]
        await eventually(chunks, lambda n: n >= 20, timeout=120, what="streams under way")
        # The victim is a worker running some of them (placement decides where they went: a worker still
        # busy with an earlier test's adapters gets none of these base-model streams).
        loads = [(await _worker_state(worker))["in_flight"] for worker in fleet]
        victim = fleet[loads.index(max(loads))]
        engine = psutil.Process(victim.process.pid).children()[0]
        dying = [engine, *engine.children(recursive=True)]
        os.killpg(engine.pid, signal.SIGKILL)
        # Until the killed process has exited, the kernel still accepts connections on its port and takes
        # a request's bytes: a request sent then was received whole and fails with its worker (502, never
        # retried, by design). Once it is gone its port refuses, and a request there is one no worker took.
        await asyncio.to_thread(psutil.wait_procs, dying, 30)
        after = [await _complete(http, FLEET_MODEL) for _ in range(6)]  # none had started: all must complete
        await asyncio.gather(*in_flight)
    for request_id in after:
        assert (await ledger_row(db, request_id))["outcome"] == "success"
    cut = 0
    for request_id, events in streams:
        row = await ledger_row(db, request_id)
        delivered = max((e["usage"]["completion_tokens"] for e in events if e.get("usage")), default=0)
        if row["worker_url"] == victim.url:
            cut += 1
            assert "error" in events[-1], "a stream cut by the dead engine ends with an error event"
            assert row["outcome"] == "upstream_error"
        assert row["completion_tokens"] == delivered, "the ledger keeps exactly the tokens delivered"
    assert cut >= 1, "at least one stream ran on the worker whose engine died"
    await _ready_in_gateway(gateway, base_env["LORAFLEET_ADMIN_TOKEN"], 2)  # the worker restarted its engine


async def test_sigterm_drains_a_worker_while_its_stream_finishes(gateway, db, fleet, uploaded):
    key, _ = uploaded
    body = {"model": FLEET_MODEL, "prompt": "Once", "max_tokens": 200, "ignore_eos": True, "stream": True}
    async with httpx.AsyncClient(base_url=gateway.url, headers=key.headers, timeout=300) as http:
        async with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.aiter_lines()
            async for line in lines:
                if line.startswith("data: {"):
                    break
            # The worker to drain is the one running this stream (placement decides which).
            running = [worker for worker in fleet if (await _worker_state(worker))["in_flight"] > 0]
            assert len(running) == 1, "the stream runs on one worker"
            leaving = running[0]
            leaving.process.send_signal(signal.SIGTERM)
            rest = [line async for line in lines]
        assert "data: [DONE]" in rest, "the stream in flight finished"
        later = [await _complete(http, FLEET_MODEL) for _ in range(4)]
    for request_id in later:
        assert (await ledger_row(db, request_id))["worker_url"] != leaving.url, "nothing new went to it"
    assert await asyncio.to_thread(leaving.process.wait, 120) == 0
