"""Every part of the GPU check that can run without a GPU, against this session's real workers.

benchmarks/gpu_check.py must work the first time it meets a GPU: its phases are run here on the CPU
engines with small counts, its report is rendered, and the shell wrapper's steps are checked.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.tiny_llama import TINY_NAME

pytestmark = pytest.mark.engine

_spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
_spec.loader.exec_module(gpu_check)


@pytest.fixture(scope="module")
async def tiny_ready(gateway, tiny_worker, tenant_key):
    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {tenant_key.secret}"}) as http:
        for _ in range(150):
            if TINY_NAME in [m["id"] for m in (await http.get("/v1/models")).json()["data"]]:
                return
            await asyncio.sleep(0.2)
    raise AssertionError("the tiny worker never reached the gateway")


async def test_every_phase_runs_and_the_report_says_what_it_measured(gateway, worker, tenant_key, base_env, tiny_ready,
                                                                    tiny_model_path, model_path, model_name, tmp_path):
    target = gpu_check.Target(gateway.url, {"Authorization": f"Bearer {tenant_key.secret}"})
    direct = gpu_check.Target(worker.url, {"Authorization": f"Bearer {base_env['LORAFLEET_INTERNAL_TOKEN']}"})
    # Five adapters over four slots, in float32 on the tiny model: served ids must equal HF+PEFT's.
    correctness = await gpu_check.check_correctness(target, TINY_NAME, tiny_model_path, tmp_path, adapters=5)
    assert correctness["matched"] == correctness["compared"] > 0, correctness["mismatches"]
    assert correctness["distinct_references"] == correctness["references"]
    throughput = await gpu_check.check_throughput(target, model_name, model_path, tmp_path, distinct=3, streams=3, tokens=4)
    assert set(throughput) == {"one adapter", "3 adapters", "base"} and min(throughput.values()) > 0
    ttft = await gpu_check.check_ttft(target, model_name, "gpuload-0", rounds=2)
    assert ttft["base_ms"] > 0 and ttft["adapter_ms"] > 0
    versus = await gpu_check.check_gateway_vs_direct(target, direct, model_name, streams=2, tokens=4)
    assert versus["direct"] > 0 and versus["gateway"] > 0
    report = gpu_check.render("CPU only", correctness, throughput, ttft, versus, 1.0)
    for row in ("adapters vs HF+PEFT", "one adapter", "3 adapters", "warm adapter TTFT", "gateway ÷ direct"):
        assert row in report


def test_asking_for_a_gpu_without_one_is_a_clear_refusal():
    import torch

    if torch.cuda.is_available():
        assert "GiB" in gpu_check.gpu_description("cuda")
        return
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check.gpu_description("cuda")
    assert gpu_check.gpu_description("cpu").startswith("CPU only")


def test_the_wrapper_installs_the_gpu_engine_and_runs_the_check():
    done = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          env={**os.environ, "GPU_CHECK_DRY_RUN": "1"}, timeout=60)
    assert done.returncode == 0, done.stderr
    steps = [line for line in done.stdout.splitlines() if line.startswith("+ ")]
    assert steps[-2] == "+ make install-dev ENGINE=gpu"
    assert steps[-1].endswith("benchmarks/gpu_check.py --device cuda")
