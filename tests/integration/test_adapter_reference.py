"""Served adapters against HF transformers + PEFT, on a tiny float32 Llama; slot reuse; eviction."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from lorafleet.adapters.architecture import model_architecture
from lorafleet.worker.adapter_cache import EVICTION_GRACE_SECONDS

from tests.adapter_factory import lora_config, write_adapter
from tests.integration.conftest import TINY_ADAPTER_CACHE_BYTES
from tests.integration.test_adapters import upload
from tests.tiny_llama import TARGETS, TINY_NAME, build_peft_adapter, reference_greedy

pytestmark = pytest.mark.engine

PROMPTS = [[1, 502, 1234, 77, 900], [1, 3000, 42, 42, 12, 8000, 5]]
MAX_TOKENS = 8


async def _complete(http: httpx.AsyncClient, model: str, prompt: list[int], max_tokens: int = MAX_TOKENS) -> list[int]:
    response = await http.post("/v1/completions", json={
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
        "return_token_ids": True,
    })
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["token_ids"]


@pytest.fixture(scope="module")
async def gateway_http(gateway, tiny_worker, tenant_key):
    # The gateway learns about the second worker within a registry refresh.
    async with httpx.AsyncClient(base_url=gateway.url, timeout=120,
                                 headers={"Authorization": f"Bearer {tenant_key.secret}"}) as http:
        for _ in range(100):
            models = (await http.get("/v1/models")).json()["data"]
            if TINY_NAME in [m["id"] for m in models]:
                break
            await asyncio.sleep(0.2)
        yield http


async def test_greedy_outputs_equal_hf_peft_with_slots_reused(gateway, gateway_http, tenant_key, tiny_model_path, tmp_path):
    adapters = {}
    for seed in range(6):  # six adapters over max_loras=4 slots
        folder = await asyncio.to_thread(build_peft_adapter, tiny_model_path, tmp_path / f"peft{seed}", seed)
        response = await upload(gateway, tenant_key.secret, f"ref-{seed}", folder, base_model=TINY_NAME)
        assert response.status_code == 201, response.text
        adapters[f"ref-{seed}"] = folder
    expected = {}
    for prompt_index, prompt in enumerate(PROMPTS):
        expected[(TINY_NAME, prompt_index)] = await asyncio.to_thread(reference_greedy, tiny_model_path, None, prompt, MAX_TOKENS)
        for name, folder in adapters.items():
            expected[(name, prompt_index)] = await asyncio.to_thread(reference_greedy, tiny_model_path, folder, prompt, MAX_TOKENS)
    assert len({tuple(v) for v in expected.values()}) == len(expected), "every adapter changes the output"

    for _ in range(2):  # the second round reloads adapters evicted from their slots
        jobs = [(model, i) for (model, i) in expected] + [(TINY_NAME, i) for i in range(len(PROMPTS))] * 2
        results = await asyncio.gather(*(_complete(gateway_http, model, PROMPTS[i]) for model, i in jobs))
        for (model, i), tokens in zip(jobs, results):
            assert tokens == expected[(model, i)], f"{model} on prompt {i} differs from HF+PEFT"


async def test_two_hundred_adapters_round_robin_through_a_small_disk_cache(gateway, gateway_http, tenant_key, tiny_model_path,
                                                                            tiny_worker, tmp_path, base_env):
    arch = model_architecture(tiny_model_path)
    names = []
    for i in range(200):
        folder = write_adapter(tmp_path / f"a{i}", arch=arch, rank=8, modules=TARGETS, seed=1000 + i,
                               config=lora_config(8, TARGETS, base=TINY_NAME))
        response = await upload(gateway, tenant_key.secret, f"rr-{i}", folder, base_model=TINY_NAME)
        assert response.status_code == 201, response.text
        names.append(f"rr-{i}")
    semaphore = asyncio.Semaphore(8)

    async def call(name: str) -> list[int]:
        async with semaphore:
            return await _complete(gateway_http, name, PROMPTS[0], 4)

    first = await asyncio.gather(*(call(name) for name in names))
    assert all(len(tokens) == 4 for tokens in first)
    cache = Path(base_env["LORAFLEET_DATA_DIR"]) / "adapter-cache" / tiny_worker.url.rsplit(":", 1)[1]
    # Once nothing was used within the grace period, one more cold load brings the cache within
    # its bound (plus the adapter just loaded). (Counting during the run would measure how many
    # adapters fit in the grace window, i.e. the machine's speed.)
    extra = write_adapter(tmp_path / "extra", arch=arch, rank=8, modules=TARGETS, seed=999,
                          config=lora_config(8, TARGETS, base=TINY_NAME))
    assert (await upload(gateway, tenant_key.secret, "rr-extra", extra, base_model=TINY_NAME)).status_code == 201
    await asyncio.sleep(EVICTION_GRACE_SECONDS + 0.5)
    await call("rr-extra")  # never seen: a cold load, which runs an eviction pass
    adapter_bytes = max(sum(f.stat().st_size for f in folder.iterdir()) for folder in cache.glob("adp_*"))
    on_disk = sum(f.stat().st_size for f in cache.glob("adp_*/*"))
    assert on_disk <= TINY_ADAPTER_CACHE_BYTES + adapter_bytes
    assert len(list(cache.glob("adp_*"))) < 40, "most adapters were evicted"
    # Evicted adapters (the first twenty are long gone) come back: fetched again, same answers.
    again = await asyncio.gather(*(call(name) for name in names[:20]))
    assert again == first[:20]
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{tiny_worker.url}/metrics", headers=tiny_worker.internal_headers)).text
    cold = re.search(r'^lorafleet_adapter_resolutions_total\{source="blob_store"\} ([0-9.]+)$', metrics, re.MULTILINE)
    evicted = re.search(r"^lorafleet_adapter_disk_cache_evictions_total ([0-9.]+)$", metrics, re.MULTILINE)
    assert cold and float(cold.group(1)) >= 200 + 20, "every first use and every use after eviction is a cold load"
    assert evicted and float(evicted.group(1)) >= 150


async def test_versions_aliases_rollback_and_the_downloaded_archive_through_peft(gateway, gateway_http, tenant_key,
                                                                                 tiny_model_path, tmp_path):
    """Two versions of one name answer differently; an alias moved to v2 and rolled back answers as v1 again;
    each version's downloaded archive, loaded as is by PEFT on the base model, gives the served answer."""
    import hashlib
    import io
    import tarfile

    name = "released"
    folders = []
    for version, seed in ((1, 11), (2, 12)):
        folder = await asyncio.to_thread(build_peft_adapter, tiny_model_path, tmp_path / f"v{version}", seed)
        made = await upload(gateway, tenant_key.secret, name, folder, base_model=TINY_NAME)
        assert made.status_code == 201 and made.json()["version"] == version, made.text
        folders.append(folder)
    prompt = PROMPTS[0]
    served = {version: await _complete(gateway_http, f"{name}@v{version}", prompt) for version in (1, 2)}
    assert served[1] != served[2], "the two versions must answer differently for this test to mean anything"
    assert await _complete(gateway_http, name, prompt) == served[2]  # the bare name: the latest version

    alias = f"/v1/adapters/{name}/aliases/prod"
    assert (await gateway_http.put(alias, json={"versions": [{"version": 1}]})).status_code == 200
    assert await _complete(gateway_http, f"{name}@prod", prompt) == served[1]
    assert (await gateway_http.put(alias, json={"versions": [{"version": 2}]})).status_code == 200
    assert await _complete(gateway_http, f"{name}@prod", prompt) == served[2]
    rolled = await gateway_http.post(f"{alias}/rollback")
    assert rolled.status_code == 200, rolled.text
    assert await _complete(gateway_http, f"{name}@prod", prompt) == served[1]

    for version, folder in zip((1, 2), folders, strict=True):
        download = await gateway_http.get(f"/v1/adapters/{name}@v{version}/content")
        assert download.status_code == 200, download.text
        assert download.headers["x-lorafleet-sha256"] == hashlib.sha256(download.content).hexdigest()
        target = tmp_path / f"out{version}"
        with tarfile.open(fileobj=io.BytesIO(download.content)) as tar:
            tar.extractall(target, filter="data")
        unpacked = target / f"{name}-v{version}"
        assert (unpacked / "adapter_model.safetensors").read_bytes() == (folder / "adapter_model.safetensors").read_bytes()
        through_peft = await asyncio.to_thread(reference_greedy, tiny_model_path, unpacked, prompt, MAX_TOKENS)
        assert through_peft == served[version], f"v{version}: PEFT on the downloaded archive differs from the served answer"
