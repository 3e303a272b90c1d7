"""Nothing reaches a worker's engine except through the guard: the token, then the allowlist.

The first test enumerates every route vLLM mounts (dev mode and runtime LoRA updating on, so the
most dangerous ones are there) and calls each through the guard in-process: without the token all
are 401 but ``/health``; with it all but the gateway's routes are 404. The others poke the real
worker over HTTP and look at its processes.
"""

from __future__ import annotations

import re

import httpx
import psutil
import pytest
from lorafleet.worker.guard import ALLOWED, OPEN, OWN_ROUTES


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_route_vllm_mounts_is_behind_the_guard(monkeypatch):
    monkeypatch.setenv("LORAFLEET_INTERNAL_TOKEN", "t0ken-for-the-guard")
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "1")
    monkeypatch.setenv("VLLM_SERVER_DEV_MODE", "1")
    monkeypatch.setenv("VLLM_PLUGINS", "lorafleet")
    from starlette.testclient import TestClient
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(
        ["--model", "m", "--enable-lora", "--middleware", "lorafleet.worker.guard.InternalGuard"])
    app = build_app(args, supported_tasks=("generate", "transcription", "realtime", "embed", "classify", "render"))
    routes = {(method, route.path) for route in app.routes
              for method in (getattr(route, "methods", None) or {"GET", "POST"})}
    assert ("POST", "/invocations") in routes and ("POST", "/v1/load_lora_adapter") in routes  # the dangerous ones exist
    assert ("GET", "/lorafleet/state") in routes  # our endpoint plugin is mounted
    client = TestClient(app, raise_server_exceptions=False)
    token = {"Authorization": "Bearer t0ken-for-the-guard"}
    passed = []
    for method, path in sorted(routes):
        url = _fill(path)
        anonymous = client.request(method, url)
        if (method, path) in OPEN:
            continue
        assert anonymous.status_code == 401, (method, path, anonymous.status_code)
        wrong = client.request(method, url, headers={"Authorization": "Bearer t0ken-for-the-guarD"})
        assert wrong.status_code == 401, (method, path)
        if (method, path) in ALLOWED or OWN_ROUTES.match(url):
            passed.append((method, path))
            continue
        with_token = client.request(method, url, headers=token)
        assert with_token.status_code == 404, (method, path, with_token.status_code)
    assert ("POST", "/v1/chat/completions") in passed
    # Only the gateway's routes and our own pass, whatever a vLLM upgrade mounts.
    assert {p for _, p in passed} <= {p for _, p in ALLOWED} | {p for _, p in routes if p.startswith("/lorafleet/")}


@pytest.mark.engine
async def test_a_real_worker_answers_nothing_without_the_token(worker, base_env):
    token = {"Authorization": f"Bearer {base_env['LORAFLEET_INTERNAL_TOKEN']}"}
    body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with httpx.AsyncClient(base_url=worker.url, timeout=30) as http:
        assert (await http.get("/health")).status_code == 200
        for method, path, payload in [
            ("POST", "/invocations", body), ("POST", "/tokenize", {"prompt": "hi"}), ("POST", "/v1/chat/completions", body),
            ("POST", "/v1/load_lora_adapter", {"lora_name": "adp_x", "lora_path": "/tmp"}), ("POST", "/adapters", {}),
            ("GET", "/metrics", None), ("GET", "/v1/models", None), ("GET", "/lorafleet/state", None),
            ("GET", "/openapi.json", None), ("GET", "/version", None), ("POST", "/v1/chat/completions/", body),
        ]:
            response = await http.request(method, path, json=payload)
            assert response.status_code == 401, (path, response.status_code, response.text[:200])
            assert "adp_" not in response.text and "vllm:" not in response.text
        # With the token: the gateway's routes work, everything else is not there.
        assert (await http.post("/v1/chat/completions", json=body, headers=token)).status_code == 200
        for method, path in [("POST", "/invocations"), ("POST", "/tokenize"), ("POST", "/v1/load_lora_adapter"),
                             ("POST", "/adapters"), ("GET", "/openapi.json"), ("POST", "/collective_rpc")]:
            response = await http.request(method, path, json=body, headers=token)
            assert response.status_code == 404, (path, response.status_code)
        state = (await http.get("/lorafleet/state", headers=token)).json()
        assert {"in_flight", "idle_seconds", "running", "waiting", "kv_cache_usage", "max_loras", "adapters"} <= set(state)
        assert {"slots", "cpu", "pinned", "disk"} <= set(state["adapters"])


@pytest.mark.engine
def test_no_secret_on_the_engine_command_line_and_no_admin_token_in_its_environment(worker, base_env):
    engine = [p for p in psutil.Process(worker.process.pid).children(recursive=True)]
    assert engine, "the worker runs its engine as child processes"
    for process in engine:
        command = " ".join(process.cmdline())
        assert base_env["LORAFLEET_INTERNAL_TOKEN"] not in command
        assert base_env["LORAFLEET_ADMIN_TOKEN"] not in command
        environment = process.environ()
        assert "LORAFLEET_ADMIN_TOKEN" not in environment
        assert base_env["LORAFLEET_ADMIN_TOKEN"] not in "".join(environment.values())
    # The supervisor itself was started with only a worker's secrets (devtools mirrors production).
    assert "LORAFLEET_ADMIN_TOKEN" not in psutil.Process(worker.process.pid).environ()
