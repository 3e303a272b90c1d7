"""Adapters end to end: upload, validation, isolation, serving by name, delete; correct base tokens."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import httpx
import openai
import pytest
from lorafleet.adapters.architecture import model_architecture
from lorafleet.gateway.fleet.registry import worker_label

from tests.adapter_factory import write_adapter
from tests.helpers import ledger_row

pytestmark = pytest.mark.engine

PROMPT = [{"role": "user", "content": "Write one sentence about the sea."}]


def _files(folder: Path) -> list[tuple[str, tuple[str, bytes]]]:
    return [("file", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]


async def upload(gateway, secret: str, name: str, folder: Path, base_model: str = "SmolLM2-135M-Instruct",
                 **fields: str) -> httpx.Response:
    # base_model is named: with the tiny reference worker up there are two base models.
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        return await http.post("/v1/adapters", data={"name": name, "base_model": base_model, **fields},
                               files=_files(folder), headers={"Authorization": f"Bearer {secret}"})


@pytest.fixture(scope="module")
def arch(model_path):
    return model_architecture(model_path)


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory, arch) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [write_adapter(root / f"a{i}", arch=arch, rank=8, modules=["q_proj", "v_proj", "down_proj"], seed=i)
            for i in range(6)]


async def _greedy(client, model: str, max_tokens: int = 12) -> str:
    reply = await client.chat.completions.create(model=model, messages=PROMPT, temperature=0, max_tokens=max_tokens)
    return reply.choices[0].message.content


async def test_upload_list_get_and_call_by_name(gateway, client, tenant_key, adapter_dirs, db, model_name):
    response = await upload(gateway, tenant_key.secret, "support-bot", adapter_dirs[0])
    assert response.status_code == 201, response.text
    adapter = response.json()
    assert adapter["id"].startswith("adp_") and adapter["name"] == "support-bot"
    assert (adapter["base_model"], adapter["rank"], adapter["status"]) == (model_name, 8, "ready")
    assert adapter["target_modules"] == ["down_proj", "q_proj", "v_proj"] and len(adapter["sha256"]) == 64

    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {tenant_key.secret}"}) as http:
        listing = (await http.get("/v1/adapters")).json()
        assert listing["object"] == "list"
        ids, after = [a["id"] for a in listing["data"]], None
        while True:  # the tenant may hold hundreds of adapters by now: follow the cursor
            params = {"limit": 7, **({"starting_after": after} if after else {})}
            page = (await http.get("/v1/adapters", params=params)).json()
            assert len(page["data"]) <= 7
            ids_page = [a["id"] for a in page["data"]]
            assert ids_page == sorted(ids_page) and (after is None or not ids_page or ids_page[0] > after)
            if not page["has_more"]:
                break
            after = ids_page[-1]
            ids += ids_page
        assert adapter["id"] in ids + ids_page
        assert (await http.get(f"/v1/adapters/{adapter['id']}")).json()["name"] == "support-bot"

    models = {m.id: m for m in (await client.models.list()).data}
    assert models["support-bot"].parent == model_name

    base_text = await _greedy(client, model_name)
    raw = await client.chat.completions.with_raw_response.create(model="support-bot", messages=PROMPT, temperature=0,
                                                                 max_tokens=12)
    reply = raw.parse()
    assert reply.model == "support-bot"
    assert reply.choices[0].message.content != base_text, "the adapter changes the output"
    row = await ledger_row(db, raw.headers["x-request-id"])
    assert row["adapter_id"] == adapter["id"] and row["completion_tokens"] == reply.usage.completion_tokens
    assert await _greedy(client, f"{model_name}:support-bot") == reply.choices[0].message.content


async def test_other_tenants_cannot_see_use_or_delete_it(gateway, make_key, tenant_key, adapter_dirs):
    response = await upload(gateway, tenant_key.secret, "private-one", adapter_dirs[1])
    adapter = response.json()
    stranger = await make_key()
    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {stranger.secret}"}) as http:
        assert adapter["id"] not in json.dumps((await http.get("/v1/adapters")).json())
        assert "private-one" not in json.dumps((await http.get("/v1/models")).json())
        foreign_get = await http.get(f"/v1/adapters/{adapter['id']}")
        missing_get = await http.get("/v1/adapters/adp_doesnotexist0000000")
        assert foreign_get.status_code == missing_get.status_code == 404
        assert (await http.delete(f"/v1/adapters/{adapter['id']}")).status_code == 404
        for model in ("private-one", adapter["id"]):
            chat = await http.post("/v1/chat/completions", json={"model": model, "messages": PROMPT})
            assert chat.status_code == 404 and chat.json()["error"]["code"] == "model_not_found"


async def test_bad_uploads_store_nothing(gateway, tenant_key, db, tmp_path, arch):
    blobs_before = await db.fetchval("SELECT count(*) FROM blobs")
    adapters_before = await db.fetchval("SELECT count(*) FROM adapters")
    pickled = write_adapter(tmp_path / "pickled", arch=arch)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    too_big_rank = write_adapter(tmp_path / "rank", arch=arch, rank=64)
    cases = [
        (pickled, "adapter_model.bin"),
        (too_big_rank, "adapter_config.json:r"),
    ]
    for folder, param in cases:
        response = await upload(gateway, tenant_key.secret, "bad", folder)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    response = await upload(gateway, tenant_key.secret, "bad name!", write_adapter(tmp_path / "ok", arch=arch))
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"
    assert await db.fetchval("SELECT count(*) FROM blobs") == blobs_before
    assert await db.fetchval("SELECT count(*) FROM adapters") == adapters_before


async def test_same_bytes_are_stored_once_and_a_name_again_is_its_next_version(gateway, tenant_key, adapter_dirs, db):
    first = (await upload(gateway, tenant_key.secret, "twin-a", adapter_dirs[2])).json()
    second = (await upload(gateway, tenant_key.secret, "twin-b", adapter_dirs[2])).json()
    assert first["sha256"] == second["sha256"]
    assert await db.fetchval("SELECT count(*) FROM blobs WHERE sha256 = $1", first["sha256"]) == 1
    again = await upload(gateway, tenant_key.secret, "twin-a", adapter_dirs[3])
    assert again.status_code == 201 and (again.json()["name"], again.json()["version"]) == ("twin-a", 2), again.text


async def test_delete_stops_serving_and_frees_the_blob(gateway, client, tenant_key, adapter_dirs, db, base_env):
    adapter = (await upload(gateway, tenant_key.secret, "short-lived", adapter_dirs[4])).json()
    await _greedy(client, "short-lived", 4)  # loaded on the worker
    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {tenant_key.secret}"}) as http:
        deleted = await http.delete(f"/v1/adapters/{adapter['id']}")
        assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
        assert (await http.get(f"/v1/adapters/{adapter['id']}")).status_code == 404
    with pytest.raises(openai.NotFoundError):
        await _greedy(client, "short-lived", 4)
    assert await db.fetchval("SELECT count(*) FROM blobs WHERE sha256 = $1", adapter["sha256"]) == 0
    blob = Path(base_env["LORAFLEET_DATA_DIR"]) / "blobs" / adapter["sha256"][:2] / adapter["sha256"]
    assert not blob.exists()
    # The name can be used again; its version number is not reused (short-lived@v1 named the deleted weights).
    again = await upload(gateway, tenant_key.secret, "short-lived", adapter_dirs[4])
    assert again.status_code == 201 and again.json()["version"] == 2


async def _generate(client, model: str) -> tuple[list[int], list[float]]:
    """Greedy tokens (prompt and completion ids) and the log-probability of each completion token."""
    reply = await client.completions.create(model=model, prompt="Write one sentence about the sea:", max_tokens=16,
                                            temperature=0, logprobs=0, extra_body={"return_token_ids": True})
    choice = reply.choices[0]
    return [*choice.prompt_token_ids, *choice.token_ids], choice.logprobs.token_logprobs


async def _score(client, model: str, token_ids: list[int], last: int) -> list[float]:
    """Teacher-forced log-probabilities of the last ``last`` tokens (prompt logprobs: nothing is sampled)."""
    reply = await client.completions.create(model=model, prompt=token_ids, max_tokens=1, temperature=0, echo=True,
                                            logprobs=0)
    return reply.choices[0].logprobs.token_logprobs[-1 - last:-1]


# Batching changes float rounding (the CPU kernels sum in another order for another batch shape), so a
# greedy text can legitimately fork at a near tie; the log-probabilities of the same tokens then differ
# by at most ~0.1 (measured: 0.00 for most requests, 0.07–0.09 for a few). Another adapter's differ by
# 0.7 or more on these adapters and prompt, so a request served with the wrong adapter (or a base
# request given an adapter's delta) cannot pass.
SAME_MODEL_TOLERANCE = 0.3


async def test_base_requests_batched_with_cycling_adapters_stay_correct(gateway, client, tenant_key, adapter_dirs,
                                                                        model_name):
    names = []
    for i, folder in enumerate(adapter_dirs):
        name = f"cycle-{i}"
        response = await upload(gateway, tenant_key.secret, name, folder)
        assert response.status_code == 201, response.text
        names.append(name)
    models = [model_name] * 4 + names
    # Everything at once, twice: 6 adapters > max_loras=4, so slots are reused between rounds, and
    # base requests share batches with adapter requests. Each output is then scored, concurrently
    # (prompt logprobs in a batch with adapters: this crashed the engine before cpu_lora_fix), by the
    # model that should have produced it and by another one.
    for _ in range(2):
        outputs = await asyncio.gather(*(_generate(client, model) for model in models))
        others = [names[0] if model == model_name else model_name for model in models]
        own_scores, other_scores = await asyncio.gather(
            asyncio.gather(*(_score(client, m, ids, len(lp)) for m, (ids, lp) in zip(models, outputs))),
            asyncio.gather(*(_score(client, m, ids, len(lp)) for m, (ids, lp) in zip(others, outputs))))
        for model, other, (_, generated), own, theirs in zip(models, others, outputs, own_scores, other_scores):
            assert len(own) == len(generated) == len(theirs)
            own_gap = max(abs(a - b) for a, b in zip(own, generated))
            other_gap = max(abs(a - b) for a, b in zip(theirs, generated))
            assert own_gap <= SAME_MODEL_TOLERANCE, f"{model} served differently when batched (gap {own_gap:.3f})"
            assert other_gap > SAME_MODEL_TOLERANCE, f"{other} scores {model}'s tokens alike: the check cannot tell"


async def test_delete_while_requests_are_in_flight(gateway, client, tenant_key, adapter_dirs, db):
    adapter = (await upload(gateway, tenant_key.secret, "in-flight", adapter_dirs[5])).json()
    body = {"model": "in-flight", "prompt": "Once upon a time", "max_tokens": 120, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    started = asyncio.Event()
    streams_started = 0

    async def stream(http: httpx.AsyncClient) -> tuple[str, dict]:
        nonlocal streams_started
        async with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            request_id = response.headers["x-request-id"]
            last, counted = None, False
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    last = json.loads(line[6:])
                    if not counted:
                        counted = True
                        streams_started += 1
                        if streams_started == 3:
                            started.set()
            return request_id, last

    async with httpx.AsyncClient(base_url=gateway.url, timeout=120,
                                 headers={"Authorization": f"Bearer {tenant_key.secret}"}) as http:
        tasks = [asyncio.create_task(stream(http)) for _ in range(3)]
        await asyncio.wait_for(started.wait(), 60)
        deleted = await http.delete(f"/v1/adapters/{adapter['id']}")
        assert deleted.status_code == 200
        later = await http.post("/v1/completions", json={"model": "in-flight", "prompt": "x", "max_tokens": 2})
        assert later.status_code == 404
        results = await asyncio.gather(*tasks)
    for request_id, last in results:
        assert last["usage"]["completion_tokens"] == 120, "in-flight requests run to the end"
        row = await ledger_row(db, request_id)
        assert row["outcome"] == "success" and row["adapter_id"] == adapter["id"]


def _cli(gateway, secret: str, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
    env.update(LORAFLEET_BASE_URL=gateway.url, LORAFLEET_API_KEY=secret, LORAFLEET_DATA_DIR=tempfile.mkdtemp())
    result = subprocess.run([sys.executable, "-m", "lorafleet.cli.main", "adapters", *args, "--json"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_cli_uploads_a_folder_and_an_archive(gateway, tenant_key, adapter_dirs, tmp_path, model_name):
    folder = adapter_dirs[3]
    from_folder = await asyncio.to_thread(_cli, gateway, tenant_key.secret, "upload", str(folder), "--name", "cli-folder",
                                          "--base-model", model_name)
    archive = tmp_path / "cli.tar.gz"
    with tarfile.open(archive, "w:gz") as bundle:
        bundle.add(folder, arcname="my-adapter")
    from_archive = await asyncio.to_thread(_cli, gateway, tenant_key.secret, "upload", str(archive), "--name", "cli-archive",
                                           "--base-model", model_name)
    assert from_folder["sha256"] == from_archive["sha256"]
    listed = await asyncio.to_thread(_cli, gateway, tenant_key.secret, "list")
    assert {"cli-folder", "cli-archive"} <= {a["name"] for a in listed["data"]}
    deleted = await asyncio.to_thread(_cli, gateway, tenant_key.secret, "delete", from_archive["id"])
    assert deleted["status"] == "deleted"


async def _resolutions(worker) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{worker.url}/metrics", headers=worker.internal_headers)).text
    found = re.findall(r'^lorafleet_adapter_resolutions_total\{source="(\w+)"\} ([0-9.]+)$', text, re.MULTILINE)
    return {source: float(value) for source, value in found}


async def test_concurrent_first_requests_fetch_a_cold_adapter_once(gateway, client, worker, tenant_key, tmp_path, model_path):
    folder = write_adapter(tmp_path / "cold", arch=model_architecture(model_path), rank=8, seed=77)
    assert (await upload(gateway, tenant_key.secret, "cold-burst", folder)).status_code == 201
    before = await _resolutions(worker)
    texts = await asyncio.gather(*(_greedy(client, "cold-burst", 4) for _ in range(8)))
    assert len(set(texts)) == 1
    after = await _resolutions(worker)
    assert after.get("blob_store", 0) - before.get("blob_store", 0) == 1, "one fetch from the blob store"
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for _ in range(20):  # the gateway polls workers twice a second
            metrics = (await http.get("/metrics")).text
            registered = re.search(rf'^lorafleet_worker_adapters_registered\{{worker_id="{worker_label(worker.url)}"\}} ([0-9.]+)$',
                                   metrics, re.MULTILINE)
            if registered and float(registered.group(1)) >= 1:
                break
            await asyncio.sleep(0.25)
    assert registered and float(registered.group(1)) >= 1


async def test_an_upload_over_the_cap_is_413_and_stores_nothing(gateways, tenant_key, db, tmp_path, model_path):
    small = await asyncio.to_thread(gateways.start, "/readyz?workers=1", LORAFLEET_MAX_UPLOAD_BYTES="200000")
    folder = write_adapter(tmp_path / "big", arch=model_architecture(model_path), rank=16,
                           modules=["q_proj", "v_proj", "down_proj"])
    assert sum(p.stat().st_size for p in folder.iterdir()) > 200_000
    blobs_before = await db.fetchval("SELECT count(*) FROM blobs")
    response = await upload(small, tenant_key.secret, "too-big", folder)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert await db.fetchval("SELECT count(*) FROM blobs") == blobs_before


async def test_an_upload_without_base_model_uses_the_one_its_config_names(gateway, tenant_key, model_path,
                                                                         tiny_model_path, tiny_worker, tmp_path):
    from tests.adapter_factory import lora_config
    from tests.tiny_llama import TINY_NAME

    smol = write_adapter(tmp_path / "smol", arch=model_architecture(model_path), rank=8, seed=31)
    tiny = write_adapter(tmp_path / "tiny", arch=model_architecture(tiny_model_path), rank=8, seed=32,
                         modules=["q_proj", "v_proj"], config=lora_config(8, ["q_proj", "v_proj"], base=TINY_NAME))
    nameless = write_adapter(tmp_path / "nameless", arch=model_architecture(model_path), rank=8, seed=33,
                             config=lora_config(8, ["q_proj", "v_proj"], base_model_name_or_path=None))
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60,
                                 headers={"Authorization": f"Bearer {tenant_key.secret}"}) as http:
        for folder, name, expected in ((smol, "inferred-smol", "SmolLM2-135M-Instruct"), (tiny, "inferred-tiny", TINY_NAME)):
            response = await http.post("/v1/adapters", data={"name": name}, files=_files(folder))
            assert response.status_code == 201, response.text
            assert response.json()["base_model"] == expected
        ambiguous = await http.post("/v1/adapters", data={"name": "no-base"}, files=_files(nameless))
        assert ambiguous.status_code == 400 and ambiguous.json()["error"]["param"] == "base_model"
