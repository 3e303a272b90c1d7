"""Faults outside the platform's code: the blob store unreadable, the adapter cache's disk full.

What a tenant sees: the requests that need the broken part get a clear 503 that costs nothing, every
other request is served, the worker stays in rotation, and it all recovers by itself once the fault
is gone. The faults are real filesystems mounted over the folders (tmpfs: read-only and empty for
the blob store, a few KiB for the cache), so this needs root and a kernel that lets it mount.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from lorafleet.adapters.architecture import model_architecture

from tests.adapter_factory import write_adapter
from tests.helpers import ledger_row, missing_capability

pytestmark = pytest.mark.engine

MODEL = "SmolLM2-135M-Instruct"


def _can_mount() -> bool:
    with tempfile.TemporaryDirectory() as folder:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "lorafleet-probe", folder],
                                 capture_output=True).returncode == 0
        if mounted:
            subprocess.run(["umount", folder], check=True)
        return mounted


@pytest.fixture(scope="module")
def tmpfs_mounts() -> None:
    if not _can_mount():
        missing_capability("needs root and tmpfs mounts to make real disk faults")


requires_mount = pytest.mark.usefixtures("tmpfs_mounts")


@contextmanager
def tmpfs_over(folder: Path, options: str) -> Iterator[None]:
    """A fresh tmpfs hides ``folder``'s contents until the block ends (lazily unmounted: nothing waits)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "lorafleet-fault", str(folder)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture(scope="module")
def adapter_folders(tmp_path_factory, model_path) -> list[Path]:
    arch = model_architecture(model_path)
    root = tmp_path_factory.mktemp("fault-adapters")
    return [write_adapter(root / f"a{i}", arch=arch, rank=8, modules=["q_proj", "v_proj"], seed=300 + i)
            for i in range(4)]


async def _upload(http: httpx.AsyncClient, name: str, folder: Path) -> httpx.Response:
    files = [("file", (path.name, path.read_bytes())) for path in sorted(folder.iterdir())]
    return await http.post("/v1/adapters", data={"name": name, "base_model": MODEL}, files=files)


async def _chat(http: httpx.AsyncClient, model: str) -> httpx.Response:
    return await http.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3, "temperature": 0})


async def _assert_unavailable_and_free(response: httpx.Response, db) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "adapter_unavailable"
    assert "Traceback" not in response.text and "/" not in error["message"]  # no paths, no stack
    assert int(response.headers["retry-after"]) >= 1
    row = await ledger_row(db, response.headers["x-request-id"])
    assert (row["outcome"], row["http_status"], row["cost_pico_usd"]) == ("unavailable", 503, 0)


async def _worker_view(gateway, base_env) -> dict:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        listed = await http.get("/admin/workers", headers={"Authorization": f"Bearer {base_env['LORAFLEET_ADMIN_TOKEN']}"})
    (view,) = [w for w in listed.json()["data"] if w["base_model"] == MODEL]
    return view


@requires_mount
async def test_an_unreadable_blob_store_fails_only_cold_adapters_and_recovers(gateway, worker, base_env, db, make_key,
                                                                              adapter_folders):
    key = await make_key()
    async with httpx.AsyncClient(base_url=gateway.url, headers=key.headers, timeout=120) as http:
        warm, cold = [(await _upload(http, f"blob-fault-{i}", adapter_folders[i])).json()["name"] for i in (0, 1)]
        assert (await _chat(http, warm)).status_code == 200

        with tmpfs_over(Path(base_env["LORAFLEET_DATA_DIR"]) / "blobs", "ro,size=4k"):
            for _ in range(4):  # more failures than it takes to quarantine a worker that is failing
                await _assert_unavailable_and_free(await _chat(http, cold), db)
            assert (await _chat(http, warm)).status_code == 200
            assert (await _chat(http, MODEL)).status_code == 200
            view = await _worker_view(gateway, base_env)
            assert view["ready"] and view["state"] == "ready" and not view["quarantined"], view

            refused = await _upload(http, "blob-fault-new", adapter_folders[2])
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "blob_store_unavailable"
            names = [a["name"] for a in (await http.get("/v1/adapters")).json()["data"]]
            assert sorted(names) == sorted([warm, cold])  # the refused upload left nothing behind

        assert (await _chat(http, cold)).status_code == 200
        assert (await _upload(http, "blob-fault-new", adapter_folders[2])).status_code == 201


@requires_mount
async def test_a_full_adapter_cache_disk_fails_only_cold_adapters_and_recovers(gateway, worker, base_env, db, make_key,
                                                                               adapter_folders):
    key = await make_key()
    port = urlparse(worker.url).port
    cache = Path(base_env["LORAFLEET_DATA_DIR"]) / "adapter-cache" / str(port)
    async with httpx.AsyncClient(base_url=gateway.url, headers=key.headers, timeout=120) as http:
        warm = (await _upload(http, "disk-fault-warm", adapter_folders[0])).json()["name"]
        cold = (await _upload(http, "disk-fault-cold", adapter_folders[3])).json()["name"]
        assert (await _chat(http, warm)).status_code == 200

        # 16 KiB: an adapter's weights (hundreds of KiB) cannot be written, so the write fails with ENOSPC.
        with tmpfs_over(cache, "size=16k"):
            for _ in range(4):
                await _assert_unavailable_and_free(await _chat(http, cold), db)
            assert (await _chat(http, warm)).status_code == 200
            assert (await _chat(http, MODEL)).status_code == 200
            assert not (await _worker_view(gateway, base_env))["quarantined"]
            assert not list(cache.iterdir())  # no half-written adapter left behind

        assert (await _chat(http, cold)).status_code == 200
