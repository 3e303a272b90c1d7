"""examples/openai_fine_tuning.py — OpenAI's documented fine-tuning flow, as a team leaving OpenAI would run
it — against the real platform: gateway, worker, trainer and PostgreSQL, through the official SDK, with
only OPENAI_BASE_URL, OPENAI_API_KEY and the base model set from outside."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.engine
EXAMPLE = REPO_ROOT / "examples" / "openai_fine_tuning.py"


async def test_openais_documented_flow_runs_unchanged(gateways, worker, trainer, make_key, base_env,  # noqa: ARG001
                                                     model_name):
    dispatching = gateways.start(LORAFLEET_BATCH_DISPATCH="true")  # runs batches, as `make up`'s gateway does
    key = await make_key()
    env = dict(base_env, OPENAI_BASE_URL=f"{dispatching.url}/v1", OPENAI_API_KEY=key.secret, BASE_MODEL=model_name)
    ran = await asyncio.to_thread(subprocess.run, [sys.executable, str(EXAMPLE), "--epochs", "2",
                                                   "--learning-rate-multiplier", "10", "--timeout", "600"],
                                  capture_output=True, text=True, timeout=1000, env=env)
    assert ran.returncode == 0, (ran.stdout[-3000:], ran.stderr[-3000:], trainer.log_text()[-2000:])
    summary = json.loads(ran.stdout.splitlines()[-1])
    assert summary["status"] == "succeeded" and summary["fine_tuned_model"].startswith(f"ft:{model_name}:zorblax:")
    assert summary["trained_tokens"] > 0 and summary["checkpoints"] >= 1
    assert summary["hyperparameters"]["n_epochs"] == 2
    assert "Quillington" in summary["answer"], summary  # it learned what the file teaches
    assert summary["batch_status"] == "completed" and len(summary["batch_answers"]) == 3, summary
    assert "uploaded file-" in ran.stdout and "Step " in ran.stdout, ran.stdout[-2000:]
