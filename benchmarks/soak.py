"""Soak: run the platform as a user does (`lorafleet up`) under mixed traffic and injected faults, then check
that nothing leaked, nothing was lost and nothing was billed wrong.

    SOAK_MINUTES=30 .venv/bin/python benchmarks/soak.py        # `make soak`
    .venv/bin/python benchmarks/soak.py --minutes 3 --database external

Traffic (a few concurrent clients, the official `openai` SDK and httpx): chat, completions, Responses and
embeddings, streamed and not, on the base model and the demo adapter; clients that go away mid-stream;
adapter uploads and deletes; keys created, used and revoked through /v1/keys; dashboard page loads (signed
in with the one-time link `lorafleet up` prints, later with `lorafleet dashboard link`). Faults at set
fractions of the run: a forced `CHECKPOINT` (three times), the worker's vLLM engine SIGKILLed (the worker's
supervisor must start a new one), the gateway stopped and started again (`lorafleet up` a second time).

Every client-visible result is recorded (status, x-request-id, the usage the client saw). A 5xx or a
connection error while a fault is being recovered from is "explained" (counted by cause); any other is a
failure. The checks, written to benchmarks/results/soak.md and soak.json; the exit status is 1 when one fails:

- ledger rows = admitted requests: every request answered 2xx (admitted) has exactly one usage_ledger row
  under its x-request-id; no row for a request the gateway refused before admission; rows no client saw an
  id for are at most the requests that lost their connection;
- usage = what clients saw: prompt/completion tokens per request id equal the ledger row's;
- no unexplained 5xx;
- gateway and worker RSS and open file descriptors (whole process trees) flat after warm-up (< 10% growth);
- local log files under the data dir's logs/ bounded by a size cap;
- WAL recycled: checkpoints happen, pg_wal stays bounded;
- database log clean: no PANIC, no crash (embedded database only: an external server's log is not ours);
- faults injected and recovered from; every kind of traffic answered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODEL_CACHE = Path.home() / ".cache" / "lorafleet" / "models" / "SmolLM2-135M-Instruct"
SAMPLE_SECONDS = 10.0
GROWTH_LIMIT = 0.10
RECOVERY_GRACE_SECONDS = 5.0     # after a fault is recovered from, stale connections may still fail once
REVOCATION_LIMIT_SECONDS = 3.0   # revocation is effective within 1 s everywhere (README); allow for scheduling
# Faults at these fractions of the traffic time. Checkpoints are no fault: a 5xx around one is a failure.
SCHEDULE = [(0.25, "checkpoint"), (0.40, "engine_kill"), (0.55, "checkpoint"), (0.70, "gateway_restart"),
            (0.85, "checkpoint")]
# FATAL lines a healthy server writes too (clients going away, our own shutdown), not crashes.
BENIGN_FATAL = re.compile(r"terminating connection due to administrator command|the database system is (starting up|"
                          r"shutting down|not yet accepting connections)|connection to client lost|"
                          r"password authentication|role .* does not exist|database .* does not exist")
CRASH_LINE = re.compile(r"\bPANIC:|\bFATAL:|was interrupted|abnormal|terminated by signal|crash recovery|"
                        r"not properly shut down|automatic recovery in progress")
CHECKS = ["ledger rows = admitted requests", "usage = what clients saw", "no unexplained 5xx",
          "gateway RSS flat", "worker RSS flat", "gateway open files flat", "worker open files flat",
          "log files bounded", "WAL recycled", "database log clean", "faults injected and recovered",
          "traffic mix answered"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- what clients saw -----------------------------------------------------------------------------------


@dataclass
class Record:
    kind: str                      # chat, completions, responses, embeddings, disconnect, adapter, key, dashboard, …
    streamed: bool
    model: str                     # base | adapter | <other>
    started: float
    ended: float = 0.0
    status: int | None = None      # None: no HTTP answer (connection error)
    request_id: str | None = None
    usage: tuple[int, int] | None = None   # (prompt, completion) as the client saw it
    error: str = ""                # connection error, or an error in a stream after its 200
    expected: tuple[int, ...] = (200,)
    cause: str = ""                # explained by which fault (filled in by the checks)

    @property
    def admitted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and self.kind in METERED

    @property
    def failed(self) -> bool:
        return self.status is None or self.status >= 500 or bool(self.error)


METERED = {"chat", "completions", "responses", "embeddings", "disconnect"}


class Recorder:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.windows: list[dict[str, Any]] = []   # {"cause", "start", "end"}
        self.events: list[dict[str, Any]] = []    # what the fault injector did, with timings

    def start(self, kind: str, streamed: bool = False, model: str = "base", expected: tuple[int, ...] = (200,)) -> Record:
        record = Record(kind, streamed, model, time.time(), expected=expected)
        self.records.append(record)
        return record

    def explain(self, record: Record) -> str:
        for window in reversed(self.windows):   # the latest fault that began before the request ended
            end = window["end"] if window["end"] is not None else float("inf")
            if record.started <= end + RECOVERY_GRACE_SECONDS and (record.ended or record.started) >= window["start"]:
                return window["cause"]
        return ""


def _finish(record: Record, response: httpx.Response | None = None, *, status: int | None = None) -> None:
    record.ended = time.time()
    if response is not None:
        record.status = response.status_code
        record.request_id = response.headers.get("x-request-id")
    elif status is not None:
        record.status = status


def _sdk_error(record: Record, exc: Exception) -> None:
    record.ended = time.time()
    if isinstance(exc, openai.APIStatusError):
        record.status = exc.status_code
        record.request_id = exc.response.headers.get("x-request-id")
        if exc.status_code == 200:   # an error event inside a stream that began well
            record.error = f"stream error: {str(exc)[:200]}"
    elif record.status == 200:       # the stream broke after its headers
        record.error = f"stream broken: {type(exc).__name__}: {str(exc)[:200]}"
    else:
        record.error = f"{type(exc).__name__}: {str(exc)[:200]}"


# ---- the platform, as `lorafleet up` runs it ----------------------------------------------------------


class Platform:
    def __init__(self, data_dir: Path, database_url: str, model_path: str) -> None:
        self.data_dir = data_dir
        self.gateway_port, self.worker_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.gateway_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LORAFLEET_")}
        env.update(LORAFLEET_DATA_DIR=str(data_dir), LORAFLEET_GATEWAY_PORT=str(self.gateway_port),
                   LORAFLEET_WORKER_PORT=str(self.worker_port),
                   # 1 GiB of KV cache (default 2): the machine is shared; the soak's requests are short.
                   LORAFLEET_KV_CACHE_GIB=os.environ.get("LORAFLEET_KV_CACHE_GIB", "1"))
        if database_url:
            env["LORAFLEET_DATABASE_URL"] = database_url
        if model_path:
            env["LORAFLEET_MODEL_PATH"] = model_path
        env.update(_log_cap_env())
        self.env = env
        self.lorafleet = [sys.executable, "-m", "lorafleet.cli.main"]
        self.demo: dict[str, str] = {}
        self.login_token = ""
        self.dsn = ""

    def run_cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([*self.lorafleet, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=self.data_dir.parent)

    def up(self) -> float:
        started = time.monotonic()
        result = self.run_cli("up")
        if result.returncode != 0:
            raise RuntimeError(f"`lorafleet up` failed ({result.returncode}):\n{result.stderr[-4000:]}\n{result.stdout[-2000:]}")
        match = re.search(r"/dashboard/login/([A-Za-z0-9_\-]+)", result.stdout)
        self.login_token = match.group(1) if match else ""
        self.demo = _read_env(self.data_dir / "demo.env")
        # Where the platform keeps its database's DSN is its own business: ask it as its CLI does.
        from lorafleet.cli.runtime import effective_settings
        from lorafleet.core.settings import CommonSettings, load_settings

        self.dsn = effective_settings(CommonSettings, load_settings(CommonSettings, self.env)).database_url
        return time.monotonic() - started

    def down(self) -> str:
        result = self.run_cli("down", timeout=300)
        return (result.stdout + result.stderr).strip()

    def pid(self, name: str) -> int | None:
        try:
            pid = int((self.data_dir / f"{name}.pid").read_text().strip())
            return pid if psutil.pid_exists(pid) else None
        except (FileNotFoundError, ValueError):
            return None

    def engine_process(self) -> psutil.Process | None:
        """The vLLM server the worker's supervisor started (its child; vLLM's engine core runs under it)."""
        pid = self.pid("worker")
        if pid is None:
            return None
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(pid).children():
                if any("vllm" in part for part in child.cmdline()):
                    return child
        return None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value.strip().strip("'\"") for key, value in pairs}


def _log_setting(word: str) -> tuple[str, int] | None:
    """The log setting (LORAFLEET_LOG_MAX_BYTES, LORAFLEET_LOG_BACKUPS) of this version, if any: name and default."""
    import msgspec
    from lorafleet.core import settings

    kind = getattr(settings, "LauncherSettings", None) or settings.Settings  # older trees: one struct
    for f in msgspec.structs.fields(kind):
        if f.name.startswith("log") and word in f.name and isinstance(f.default, int):
            return f"LORAFLEET_{f.name.upper()}", f.default
    return None


def _log_cap_field() -> tuple[str, int] | None:
    return _log_setting("bytes")


def _log_cap_env() -> dict[str, str]:
    # A small cap (SOAK_LOG_CAP_BYTES) so that rotation happens within minutes and the check sees it work.
    cap = _log_cap_field()
    wanted = os.environ.get("SOAK_LOG_CAP_BYTES", str(128 * 1024))
    return {cap[0]: wanted} if cap and cap[0] not in os.environ else {}


def tree(pid: int | None) -> tuple[int, int, int] | None:
    """(RSS bytes, open fds, processes) of a process and all its descendants."""
    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    rss = fds = alive = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            rss += process.memory_info().rss
            fds += process.num_fds()
            alive += 1
    return rss, fds, alive


# ---- traffic ---------------------------------------------------------------------------------------------

PROMPTS = ["Write one sentence about the sea.", "Name three colours.", "What is a LoRA adapter?",
           "Count from one to five.", "Say hello in French.", "Describe a cat in four words."]


class Traffic:
    def __init__(self, platform: Platform, recorder: Recorder, seed: int) -> None:
        self.platform = platform
        self.rec = recorder
        self.rng = random.Random(seed)
        self.key = platform.demo["LORAFLEET_API_KEY"]
        self.model = platform.demo["LORAFLEET_MODEL"]
        self.adapter = platform.demo["LORAFLEET_DEMO_ADAPTER"]
        self.tenant = platform.demo["LORAFLEET_DEMO_TENANT"]
        self.sdk = openai.AsyncOpenAI(base_url=platform.url + "/v1", api_key=self.key, max_retries=0, timeout=300)
        self.http = httpx.AsyncClient(base_url=platform.url, headers={"Authorization": f"Bearer {self.key}"},
                                      timeout=300)
        self.embed_model: str | None = None   # an embedding base model, if the platform serves one
        self.adapter_seq = 0
        self.revocation_seconds: list[float] = []

    async def close(self) -> None:
        await self.sdk.close()
        await self.http.aclose()

    def _model(self, label: str) -> str:
        return self.adapter if label == "adapter" else self.model

    # -- one request of each kind --

    async def chat(self, stream: bool, label: str) -> None:
        model = self._model(label)
        record = self.rec.start("chat", stream, label)
        messages = [{"role": "user", "content": self.rng.choice(PROMPTS)}]
        max_tokens = self.rng.randint(8, 24)
        try:
            if not stream:
                raw = await self.sdk.chat.completions.with_raw_response.create(model=model, messages=messages,
                                                                               max_tokens=max_tokens)
                record.status, record.request_id = raw.http_response.status_code, raw.headers.get("x-request-id")
                reply = raw.parse()
                record.usage = (reply.usage.prompt_tokens, reply.usage.completion_tokens) if reply.usage else None
            else:
                async with self.sdk.chat.completions.with_streaming_response.create(
                        model=model, messages=messages, max_tokens=max_tokens, stream=True,
                        stream_options={"include_usage": True}) as response:
                    record.status, record.request_id = response.http_response.status_code, response.headers.get("x-request-id")
                    async for chunk in await response.parse():
                        if chunk.usage:
                            record.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            record.ended = time.time()
        except Exception as exc:  # noqa: BLE001 - every failure is a result to record
            _sdk_error(record, exc)

    async def completions(self, stream: bool, label: str) -> None:
        """Through httpx, as a client without the SDK would."""
        model = self._model(label)
        record = self.rec.start("completions", stream, label)
        body: dict[str, Any] = {"model": model, "prompt": self.rng.choice(PROMPTS), "max_tokens": self.rng.randint(8, 24)}
        try:
            if not stream:
                response = await self.http.post("/v1/completions", json=body)
                _finish(record, response)
                if response.status_code == 200:
                    usage = response.json().get("usage") or {}
                    record.usage = (usage["prompt_tokens"], usage["completion_tokens"]) if usage else None
                return
            body.update(stream=True, stream_options={"include_usage": True})
            async with self.http.stream("POST", "/v1/completions", json=body) as response:
                record.status, record.request_id = response.status_code, response.headers.get("x-request-id")
                if response.status_code != 200:
                    await response.aread()
                else:
                    async for line in response.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            record.error = f"stream error: {json.dumps(chunk['error'])[:200]}"
                        elif chunk.get("usage"):
                            record.usage = (chunk["usage"]["prompt_tokens"], chunk["usage"]["completion_tokens"])
            record.ended = time.time()
        except Exception as exc:  # noqa: BLE001
            _sdk_error(record, exc)

    async def responses(self, stream: bool, label: str) -> None:
        model = self._model(label)
        record = self.rec.start("responses", stream, label)
        kwargs = dict(model=model, input=self.rng.choice(PROMPTS), max_output_tokens=self.rng.randint(16, 24), store=False)
        try:
            if not stream:
                raw = await self.sdk.responses.with_raw_response.create(**kwargs)
                record.status, record.request_id = raw.http_response.status_code, raw.headers.get("x-request-id")
                reply = raw.parse()
                record.usage = (reply.usage.input_tokens, reply.usage.output_tokens) if reply.usage else None
            else:
                async with self.sdk.responses.with_streaming_response.create(stream=True, **kwargs) as response:
                    record.status, record.request_id = response.http_response.status_code, response.headers.get("x-request-id")
                    async for event in await response.parse():
                        if event.type in ("response.completed", "response.incomplete") and event.response.usage:
                            usage = event.response.usage
                            record.usage = (usage.input_tokens, usage.output_tokens)
                        elif event.type in ("error", "response.failed"):
                            record.error = f"stream error: {event.type}"
            record.ended = time.time()
        except Exception as exc:  # noqa: BLE001
            _sdk_error(record, exc)

    async def embeddings(self, _stream: bool = False, _label: str = "base") -> None:
        """On the platform's embedding model when it serves one; else on the demo model, which must refuse
        with a precise 400 (it generates; it does not embed)."""
        model = self.embed_model or self.model
        record = self.rec.start("embeddings", False, "embed" if self.embed_model else "base",
                                expected=(200,) if self.embed_model else (400,))
        try:
            raw = await self.sdk.embeddings.with_raw_response.create(model=model, input=[self.rng.choice(PROMPTS)])
            record.status, record.request_id = raw.http_response.status_code, raw.headers.get("x-request-id")
            reply = raw.parse()
            record.usage = (reply.usage.prompt_tokens, 0) if reply.usage else None
            record.ended = time.time()
        except Exception as exc:  # noqa: BLE001
            _sdk_error(record, exc)

    async def disconnect(self, _stream: bool, label: str) -> None:
        """A client that reads the first events of a stream and goes away."""
        model = self._model(label)
        record = self.rec.start("disconnect", True, label)
        body = {"model": model, "messages": [{"role": "user", "content": self.rng.choice(PROMPTS)}],
                "max_tokens": 64, "stream": True}
        try:
            async with httpx.AsyncClient(base_url=self.platform.url, timeout=300,
                                         headers={"Authorization": f"Bearer {self.key}"}) as http:
                async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                    record.status, record.request_id = response.status_code, response.headers.get("x-request-id")
                    if response.status_code == 200:
                        seen = 0
                        async for line in response.aiter_lines():
                            seen += line.startswith("data: ")
                            if seen >= 2:
                                break   # leaving the block closes the connection mid-stream
            record.ended = time.time()
        except Exception as exc:  # noqa: BLE001
            _sdk_error(record, exc)

    async def client(self, index: int, deadline: float) -> None:
        """Every kind of request in turn (a new random order each round), so that each is seen many times."""
        rng = random.Random(self.rng.random() + index)
        kinds = [(method, stream, label) for method in (self.chat, self.completions, self.responses)
                 for stream in (False, True) for label in ("base", "adapter")]
        kinds += [(self.disconnect, True, "base"), (self.disconnect, True, "adapter"), (self.embeddings, False, "base")]
        while time.time() < deadline:
            rng.shuffle(kinds)
            for method, stream, label in kinds:
                if time.time() >= deadline:
                    return
                count = len(self.rec.records)
                await method(stream, label)
                lost = any(r.status is None for r in self.rec.records[count:])
                # A gentle client (the machine is shared), slower while the gateway cannot be reached.
                await asyncio.sleep(1.0 if lost else rng.uniform(0.1, 0.5))

    # -- the chores: adapters, keys, dashboard --

    async def adapter_cycle(self, folder: Path) -> None:
        """Upload an adapter, call it, delete it, call it again (404)."""
        from lorafleet.adapters.architecture import model_architecture
        from lorafleet.adapters.demo import write_random_adapter
        from lorafleet.core.settings import WorkerSettings, load_settings

        self.adapter_seq += 1
        name = f"soak-{self.adapter_seq}"
        model_path = load_settings(WorkerSettings, self.platform.env).resolved_model_path
        files = write_random_adapter(folder / name, model_architecture(model_path), self.model, seed=self.adapter_seq)
        parts = [("file", (p.name, p.read_bytes())) for p in sorted(files.iterdir())]
        record = self.rec.start("adapter_upload", expected=(201,))
        try:
            response = await self.http.post("/v1/adapters", data={"name": name, "base_model": self.model}, files=parts)
            _finish(record, response)
        except httpx.HTTPError as exc:
            _sdk_error(record, exc)
            return
        if response.status_code != 201:
            return
        adapter_id = response.json()["id"]
        await self._complete_with(name, "adapter_use", (200,))
        record = self.rec.start("adapter_delete")
        try:
            _finish(record, await self.http.delete(f"/v1/adapters/{adapter_id}"))
        except httpx.HTTPError as exc:
            _sdk_error(record, exc)
            return
        await self._complete_with(name, "adapter_deleted_use", (404,))

    async def _complete_with(self, model: str, kind: str, expected: tuple[int, ...], key: str | None = None) -> None:
        record = self.rec.start(kind, False, model, expected)
        headers = {"Authorization": f"Bearer {key}"} if key else None
        try:
            response = await self.http.post("/v1/completions", headers=headers,
                                            json={"model": model, "prompt": "Hello", "max_tokens": 4})
            _finish(record, response)
            if response.status_code == 200:
                usage = response.json()["usage"]
                record.usage = (usage["prompt_tokens"], usage["completion_tokens"])
        except httpx.HTTPError as exc:
            _sdk_error(record, exc)

    async def key_cycle(self) -> None:
        """Create a key, use it, revoke it, and see it refused within the revocation bound."""
        record = self.rec.start("key_create", expected=(201,))
        try:
            response = await self.http.post("/v1/keys", json={"name": f"soak-{int(time.time())}"})
            _finish(record, response)
        except httpx.HTTPError as exc:
            _sdk_error(record, exc)
            return
        if response.status_code != 201:
            return
        created = response.json()
        # The new key's request is metered like any other: it counts in the ledger check.
        await self._complete_with(self.model, "completions", (200,), key=created["secret"])
        record = self.rec.start("key_revoke")
        try:
            _finish(record, await self.http.delete(f"/v1/keys/{created['id']}"))
        except httpx.HTTPError as exc:
            _sdk_error(record, exc)
            return
        revoked_at = time.monotonic()
        record = self.rec.start("key_revoked_use", expected=(401,))
        while True:
            try:
                response = await self.http.get("/v1/models", headers={"Authorization": f"Bearer {created['secret']}"})
            except httpx.HTTPError as exc:
                _sdk_error(record, exc)
                return
            if response.status_code == 401 or time.monotonic() - revoked_at > REVOCATION_LIMIT_SECONDS:
                _finish(record, response)
                self.revocation_seconds.append(time.monotonic() - revoked_at)
                return
            await asyncio.sleep(0.2)


class Dashboard:
    PAGES = ["/dashboard/", "/dashboard/usage", "/dashboard/keys", "/dashboard/adapters", "/dashboard/invoices"]

    def __init__(self, platform: Platform, recorder: Recorder) -> None:
        self.platform = platform
        self.rec = recorder
        self.http = httpx.AsyncClient(base_url=platform.url, timeout=60)
        self.token = platform.login_token
        self.logins = 0

    async def _login(self) -> None:
        if not self.token:   # a fresh one-time link, as an operator makes one
            result = await asyncio.to_thread(self.platform.run_cli, "dashboard", "link", "--tenant",
                                             self.platform.demo["LORAFLEET_DEMO_TENANT"], "--json", timeout=120)
            with contextlib.suppress(ValueError, KeyError, IndexError):
                self.token = json.loads(result.stdout.strip().splitlines()[-1])["url"].rsplit("/", 1)[1]
        record = self.rec.start("dashboard_login", expected=(303,))
        token, self.token = self.token, ""
        if not token:
            record.ended, record.error = time.time(), "`lorafleet dashboard link` gave no link"
            return
        self.http.cookies.clear()
        try:
            _finish(record, await self.http.get(f"/dashboard/login/{token}"))
            self.logins += record.status == 303
        except httpx.HTTPError as exc:
            _sdk_error(record, exc)

    async def visit(self, fresh_link: bool) -> None:
        if fresh_link or not self.http.cookies:
            await self._login()
        for page in self.PAGES:
            record = self.rec.start("dashboard")
            try:
                _finish(record, await self.http.get(page))   # signed out: a 303 to the sign-in page
            except httpx.HTTPError as exc:
                _sdk_error(record, exc)

    async def close(self) -> None:
        await self.http.aclose()


# ---- faults and sampling ------------------------------------------------------------------------------


async def _until_ready(platform: Platform, timeout: float = 300) -> float:
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=3) as http:
        while time.monotonic() - started < timeout:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{platform.url}/readyz?workers=1")).status_code == 200:
                    return time.monotonic() - started
            await asyncio.sleep(0.5)
    raise TimeoutError(f"the platform was not ready {timeout:.0f} s after the fault")


async def checkpoint(platform: Platform, recorder: Recorder) -> None:
    started = time.time()
    try:
        connection = await asyncpg.connect(platform.dsn, timeout=30)
        try:
            await connection.execute("CHECKPOINT")
            # A request right after it must still reach the database (the defect: the server PANICs at its
            # first checkpoint and every request after is a 500).
            ok = await connection.fetchval("SELECT 1") == 1
        finally:
            await connection.close()
        recorder.events.append({"fault": "checkpoint", "at": started, "seconds": round(time.time() - started, 2), "ok": ok})
    except Exception as exc:  # noqa: BLE001
        recorder.events.append({"fault": "checkpoint", "at": started, "ok": False, "error": repr(exc)[:300]})


async def engine_kill(platform: Platform, recorder: Recorder) -> None:
    engine = platform.engine_process()
    window = {"cause": "engine_kill", "start": time.time(), "end": None}
    if engine is None:
        recorder.events.append({"fault": "engine_kill", "at": window["start"], "ok": False, "error": "no engine process found"})
        return
    recorder.windows.append(window)
    engine.send_signal(signal.SIGKILL)
    event: dict[str, Any] = {"fault": "engine_kill", "at": window["start"], "pid": engine.pid}
    try:
        # The gateway may call the worker ready for a moment still: wait for the supervisor's new engine first.
        replacement = None
        while time.time() - window["start"] < 240:
            replacement = platform.engine_process()
            if replacement is not None and replacement.pid != engine.pid:
                break
            await asyncio.sleep(0.5)
        event["new_pid"] = replacement.pid if replacement else None
        event["ok"] = replacement is not None and replacement.pid != engine.pid
        await asyncio.sleep(3)   # the gateway re-reads worker states every second
        await _until_ready(platform)
        event["recovered_seconds"] = round(time.time() - window["start"], 1)
        # The killed server's engine-core child must not live on outside the worker's tree.
        event["orphans"] = _group_members(engine.pid)
        event["ok"] = event["ok"] and not event["orphans"]
    except TimeoutError as exc:
        event.update(ok=False, error=str(exc))
    window["end"] = time.time()
    recorder.events.append(event)


async def gateway_restart(platform: Platform, recorder: Recorder) -> None:
    from lorafleet.cli.runtime import stop_process

    window = {"cause": "gateway_restart", "start": time.time(), "end": None}
    recorder.windows.append(window)
    event: dict[str, Any] = {"fault": "gateway_restart", "at": window["start"], "old_pid": platform.pid("gateway")}
    try:
        await asyncio.to_thread(stop_process, platform.data_dir / "gateway.pid")
        event["stopped_seconds"] = round(time.time() - window["start"], 1)
        await asyncio.to_thread(platform.up)   # starts what is not running: the gateway
        event["recovered_seconds"] = round(time.time() - window["start"], 1)
        event["new_pid"] = platform.pid("gateway")
        event["ok"] = event["new_pid"] is not None and event["new_pid"] != event["old_pid"]
    except Exception as exc:  # noqa: BLE001
        event.update(ok=False, error=repr(exc)[:500])
    window["end"] = time.time()
    recorder.events.append(event)


FAULTS = {"checkpoint": checkpoint, "engine_kill": engine_kill, "gateway_restart": gateway_restart}


async def inject(platform: Platform, recorder: Recorder, begin: float, seconds: float) -> None:
    for fraction, name in SCHEDULE:
        await asyncio.sleep(max(0.0, begin + fraction * seconds - time.time()))
        print(f"  [{time.time() - begin:6.0f} s] fault: {name}", flush=True)
        await FAULTS[name](platform, recorder)


async def sample(platform: Platform, samples: list[dict[str, Any]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        row: dict[str, Any] = {"t": time.time()}
        for name in ("gateway", "worker"):
            found = tree(platform.pid(name))
            row[name] = {"rss": found[0], "fds": found[1], "processes": found[2]} if found else None
        logs = _log_files(platform)
        row["logs_bytes"] = sum(p.stat().st_size for p in logs)
        samples.append(row)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_SECONDS)


async def chores(traffic: Traffic, dashboard: Dashboard, folder: Path, deadline: float, seconds: float) -> None:
    """Adapters, keys and the dashboard, spread over the run (each at least once)."""
    step = 0
    adapter_every = max(1, round(min(60.0, seconds / 3) / 10))
    key_every = max(1, round(min(30.0, seconds / 4) / 10))
    link_every = max(1, round(min(300.0, seconds / 2) / 10))
    while time.time() < deadline:
        if step % adapter_every == 0:
            await traffic.adapter_cycle(folder)
        if step % key_every == 1 % key_every:
            await traffic.key_cycle()
        await dashboard.visit(fresh_link=step > 0 and step % link_every == 0)
        step += 1
        await asyncio.sleep(max(0.0, min(10.0, deadline - time.time())))


# ---- checks ----------------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)


async def ledger_rows(platform: Platform, tenant_id: str, ids: set[str], wait_seconds: float = 30) -> dict[str, Any]:
    """The tenant's ledger rows, once every admitted id has one (or after ``wait_seconds``: the writer batches)."""
    connection = await asyncpg.connect(platform.dsn, timeout=30)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            rows = await connection.fetch("SELECT request_id, prompt_tokens, completion_tokens, outcome, http_status, "
                                          "endpoint FROM usage_ledger WHERE tenant_id = $1", tenant_id)
            found = {row["request_id"]: dict(row) for row in rows}
            if ids <= set(found) or time.monotonic() > deadline:
                return found
            await asyncio.sleep(1)
    finally:
        await connection.close()


def check_ledger(records: list[Record], rows: dict[str, dict[str, Any]]) -> list[Check]:
    metered = [r for r in records if r.kind in METERED or r.kind in ("adapter_use", "adapter_deleted_use")]
    admitted = [r for r in metered if r.admitted or (r.kind == "adapter_use" and r.status == 200)]
    missing = [r.request_id for r in admitted if r.request_id not in rows]
    no_id = [r for r in admitted if not r.request_id]
    seen = {r.request_id for r in records if r.request_id}
    refused = [r for r in metered if r.status is not None and 400 <= r.status < 500 and r.request_id in rows]
    unseen = [rid for rid in rows if rid not in seen]
    lost = [r for r in metered if r.request_id is None]   # no answer at all: the gateway may have billed it
    ok = not missing and not no_id and not refused and len(unseen) <= len(lost)
    ledger = Check("ledger rows = admitted requests", ok,
                   f"{len(admitted)} admitted requests, {len(admitted) - len(missing)} with their ledger row; "
                   f"{len(missing)} missing, {len(no_id)} without x-request-id; {len(refused)} rows for refused requests; "
                   f"{len(unseen)} rows no client saw an id for (allowed: at most the {len(lost)} requests that lost "
                   f"their connection)",
                   {"admitted": len(admitted), "ledger_rows": len(rows), "missing": missing[:20],
                    "rows_for_refused": [r.request_id for r in refused][:20], "rows_unseen": len(unseen),
                    "requests_without_answer": len(lost),
                    "outcomes": _count(row["outcome"] for row in rows.values())})
    compared = [r for r in admitted if r.usage is not None and r.request_id in rows]
    differ = [{"request_id": r.request_id, "client": r.usage,
               "ledger": (rows[r.request_id]["prompt_tokens"], rows[r.request_id]["completion_tokens"])}
              for r in compared
              if r.usage != (rows[r.request_id]["prompt_tokens"], rows[r.request_id]["completion_tokens"])]
    without_usage = [r for r in admitted if r.usage is None and r.kind != "disconnect" and not r.error]
    usage = Check("usage = what clients saw", not differ and not without_usage and bool(compared),
                  f"{len(compared)} requests compared, {len(differ)} differ; {len(without_usage)} answered 200 without "
                  f"usage (disconnects and broken streams saw none)",
                  {"compared": len(compared), "differ": differ[:20],
                   "without_usage": [r.request_id for r in without_usage][:20],
                   "prompt_tokens": sum(r.usage[0] for r in compared),
                   "completion_tokens": sum(r.usage[1] for r in compared)})
    return [ledger, usage]


def check_errors(recorder: Recorder) -> list[Check]:
    explained: dict[str, int] = {}
    unexplained: list[dict[str, Any]] = []
    unexpected: list[dict[str, Any]] = []
    for record in recorder.records:
        if record.failed:
            record.cause = recorder.explain(record)
            if record.cause:
                explained[record.cause] = explained.get(record.cause, 0) + 1
            else:
                unexplained.append(_brief(record))
        elif record.status not in record.expected:
            unexpected.append(_brief(record))
    ok = not unexplained and not unexpected
    return [Check("no unexplained 5xx", ok,
                  f"{sum(explained.values())} explained by faults {explained or ''}; {len(unexplained)} unexplained "
                  f"5xx/connection errors; {len(unexpected)} other unexpected statuses",
                  {"explained": explained, "unexplained": unexplained[:30], "unexpected": unexpected[:30]})]


def _brief(record: Record) -> dict[str, Any]:
    return {"kind": record.kind, "streamed": record.streamed, "model": record.model, "status": record.status,
            "request_id": record.request_id, "error": record.error[:200],
            "at": dt.datetime.fromtimestamp(record.started, dt.UTC).strftime("%H:%M:%S")}


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return dict(sorted(counts.items()))


def check_flat(samples: list[dict[str, Any]], warm_end: float) -> list[Check]:
    checks = []
    for role in ("gateway", "worker"):
        for metric, label in (("rss", "RSS"), ("fds", "open files")):
            name = f"{role} {label} flat"
            after = [s[role][metric] for s in samples if s["t"] >= warm_end and s.get(role)]
            if len(after) < 4:
                checks.append(Check(name, False, f"only {len(after)} samples after warm-up", {}))
                continue
            first, last = statistics.median(after[:3]), statistics.median(after[-3:])
            growth = (last - first) / first if first else 0.0
            unit = (lambda v: f"{v / 2**20:,.0f} MiB") if metric == "rss" else (lambda v: f"{v:.0f}")
            peak = max(after)
            checks.append(Check(name, growth < GROWTH_LIMIT,
                                f"{unit(first)} after warm-up → {unit(last)} at the end ({growth:+.1%}; peak {unit(peak)}; "
                                f"{len(after)} samples)",
                                {"after_warmup": first, "end": last, "growth": round(growth, 4), "peak": peak}))
    return checks


def _log_files(platform: Platform) -> list[Path]:
    """The log files under logs/ (NAME.log and its rotations NAME.log.N), not the writers' NAME.log.pid files."""
    if not platform.logs.exists():
        return []
    return sorted(p for p in platform.logs.glob("*") if p.is_file() and re.search(r"\.log(\.\d+)?$", p.name))


def check_logs(platform: Platform, samples: list[dict[str, Any]], seconds: float) -> Check:
    cap = _log_cap_field()
    files = _log_files(platform)
    sizes = {p.name: p.stat().st_size for p in files}
    total = sum(sizes.values())
    rate = (samples[-1]["logs_bytes"] - samples[0]["logs_bytes"]) / max(seconds, 1) * 60 if len(samples) > 1 else 0
    figures = {"files": sizes, "total_bytes": total, "growth_bytes_per_minute": round(rate)}
    if cap is None:
        return Check("log files bounded", False,
                     f"no size cap on local logs (no LORAFLEET_LOG_*_BYTES setting): {len(files)} files, "
                     f"{total / 2**20:.1f} MiB, growing {rate / 1024:,.0f} KiB/min without bound", figures)
    limit = int(platform.env.get(cap[0], cap[1]))
    backups_setting = _log_setting("backup")
    backups = int(platform.env.get(backups_setting[0], backups_setting[1])) if backups_setting else None
    slack = 64 * 1024   # a line or a buffered burst past the cap before rotation
    over = {name: size for name, size in sizes.items() if size > limit + slack}
    rotated = [name for name in sizes if re.search(r"\.log\.\d+$", name)]
    per_log = _count(name.split(".log")[0] for name in sizes)
    too_many = {name: n for name, n in per_log.items() if backups is not None and n > backups + 1}
    figures.update(cap_setting=cap[0], cap_bytes=limit, backups=backups, rotated_files=len(rotated))
    return Check("log files bounded", not over and not too_many,
                 f"{len(files)} files ({len(rotated)} rotated), {total / 2**20:.2f} MiB, largest "
                 f"{max(sizes.values(), default=0) / 2**20:.2f} MiB; cap {limit / 2**20:.2f} MiB per file ({cap[0]}), "
                 f"{backups if backups is not None else '?'} backups; over the cap: {over or 'none'}; more files than "
                 f"the backups allow: {too_many or 'none'}; written {rate / 1024:,.0f} KiB/min", figures)


async def database_state(platform: Platform) -> dict[str, Any]:
    connection = await asyncpg.connect(platform.dsn, timeout=30)
    try:
        state: dict[str, Any] = {"server_version": await connection.fetchval("SHOW server_version_num")}
        if int(state["server_version"]) >= 170000:
            row = await connection.fetchrow("SELECT * FROM pg_stat_checkpointer")
            state["checkpoints_timed"], state["checkpoints_requested"] = row["num_timed"], row["num_requested"]
            state["checkpoints_done"] = row.get("num_done") if "num_done" in row.keys() else None
        else:
            row = await connection.fetchrow("SELECT checkpoints_timed, checkpoints_req FROM pg_stat_bgwriter")
            state["checkpoints_timed"], state["checkpoints_requested"] = row["checkpoints_timed"], row["checkpoints_req"]
            state["checkpoints_done"] = None
        wal = await connection.fetchrow("SELECT count(*) AS segments, coalesce(sum(size), 0) AS bytes FROM pg_ls_waldir() "
                                        "WHERE name ~ '^[0-9A-F]{24}$'")
        state["wal_segments"], state["wal_bytes"] = wal["segments"], int(wal["bytes"])
        state["wal_lsn"] = str(await connection.fetchval("SELECT pg_current_wal_lsn()"))
        state["max_wal_size"] = await connection.fetchval("SELECT setting::bigint * 1024 * 1024 FROM pg_settings "
                                                          "WHERE name = 'max_wal_size'")
        state["wal_keep_size"] = await connection.fetchval("SELECT setting::bigint * 1024 * 1024 FROM pg_settings "
                                                           "WHERE name = 'wal_keep_size'")
        state["wal_segment_size"] = await connection.fetchval("SELECT setting::bigint FROM pg_settings "
                                                              "WHERE name = 'wal_segment_size'")
        state["wal_written_since_start"] = int(await connection.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"))
        return state
    finally:
        await connection.close()


def check_wal(before: dict[str, Any] | None, after: dict[str, Any] | None, forced: int) -> Check:
    if not before or not after:
        return Check("WAL recycled", False, "the database could not be read", {"before": before, "after": after})
    checkpoints = ((after["checkpoints_timed"] + after["checkpoints_requested"])
                   - (before["checkpoints_timed"] + before["checkpoints_requested"]))
    written = after["wal_written_since_start"] - before["wal_written_since_start"]
    # pg_wal is bounded by max_wal_size (+ what wal_keep_size holds, + the segments in use) once checkpoints run.
    bound = after["max_wal_size"] + after["wal_keep_size"] + 3 * after["wal_segment_size"]
    ok = checkpoints >= forced and after["wal_bytes"] <= bound
    return Check("WAL recycled", ok,
                 f"{checkpoints} checkpoints during the run ({forced} forced; timed {after['checkpoints_timed']}, "
                 f"requested {after['checkpoints_requested']} in total); pg_wal {after['wal_segments']} segments, "
                 f"{after['wal_bytes'] / 2**20:.0f} MiB (bound {bound / 2**20:.0f} MiB = max_wal_size + wal_keep_size "
                 f"+ 3 segments; {before['wal_segments']} segments at the start); {written / 2**20:.1f} MiB of WAL written",
                 {"before": before, "after": after, "checkpoints": checkpoints, "wal_written_bytes": written,
                  "bound_bytes": bound})


def check_database_log(platform: Platform, external: bool) -> Check:
    if external:
        return Check("database log clean", True, "external database: its server log is not the soak's to read "
                     "(run with the embedded database for this check)", {"skipped": True})
    log_path = platform.pgdata / "log"
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return Check("database log clean", False, f"cannot read {log_path}: {exc}", {})
    crashes = [line for line in lines if CRASH_LINE.search(line) and not BENIGN_FATAL.search(line)]
    shut_down = _clean_shutdown(lines)
    return Check("database log clean", not crashes and shut_down,
                 f"{len(lines)} lines, {len(crashes)} PANIC/FATAL/crash lines; "
                 f"{'ends with a clean shutdown' if shut_down else 'no clean shutdown at its end'}",
                 {"crash_lines": crashes[:20], "clean_shutdown": shut_down, "tail": lines[-8:]})


def _clean_shutdown(lines: list[str]) -> bool:
    """The log ends with a completed shutdown checkpoint, then "database system is shut down"."""
    starts = [i for i, line in enumerate(lines) if "checkpoint starting: shutdown" in line]
    if not starts:
        return False
    rest = lines[starts[-1]:]
    done = next((i for i, line in enumerate(rest) if "checkpoint complete" in line), None)
    return done is not None and any("database system is shut down" in line for line in rest[done:])


def _group_members(pgid: int) -> list[int]:
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
    return members


def check_faults(recorder: Recorder) -> Check:
    done = _count(e["fault"] for e in recorder.events if e.get("ok"))
    wanted = _count(name for _, name in SCHEDULE)
    failed = [e for e in recorder.events if not e.get("ok")]
    ok = done == wanted and not failed
    recovery = {e["fault"]: e.get("recovered_seconds") for e in recorder.events if "recovered_seconds" in e}
    return Check("faults injected and recovered", ok,
                 f"done {done} of {wanted}; recovery seconds {recovery}; failed: {failed or 'none'}",
                 {"events": recorder.events})


def check_mix(records: list[Record], embed_model: str | None) -> Check:
    wanted = [(kind, streamed, model) for kind in ("chat", "completions", "responses") for streamed in (False, True)
              for model in ("base", "adapter")] + [("disconnect", True, "base"), ("disconnect", True, "adapter")]
    answered = {(r.kind, r.streamed, r.model) for r in records if r.status == 200 and not r.error}
    missing = [f"{k}{' stream' if s else ''} {m}" for k, s, m in wanted if (k, s, m) not in answered]
    for kind in ("adapter_upload", "adapter_delete", "key_create", "key_revoke", "key_revoked_use", "dashboard",
                 "dashboard_login"):
        if not any(r.kind == kind and r.status in r.expected and not r.error for r in records):
            missing.append(kind)
    embeddings = [r for r in records if r.kind == "embeddings"]
    embed_note = (f"embeddings on {embed_model}: {_count(r.status for r in embeddings)}" if embed_model else
                  f"the demo model cannot embed (no embedding model is served): {len(embeddings)} embeddings requests, "
                  f"answered {_count(r.status for r in embeddings)} (400 unsupported_model expected)")
    table = _count(f"{r.kind}{' stream' if r.streamed else ''} {r.model} {r.status}" for r in records)
    return Check("traffic mix answered", not missing,
                 f"{len(records)} requests; kinds never answered as expected: {missing or 'none'}; {embed_note}",
                 {"by_kind_model_status": table})


# ---- the run ----------------------------------------------------------------------------------------------


async def external_database(admin_dsn: str) -> tuple[str, str]:
    name = f"lorafleet_soak_{os.getpid()}_{random.randrange(1 << 30):x}"
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{name}", name


async def drop_database(admin_dsn: str, name: str) -> None:
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def soak(args: argparse.Namespace) -> int:
    seconds = args.minutes * 60
    work = Path(tempfile.mkdtemp(prefix="lorafleet-soak-"))
    data_dir = work / "data"
    database_url = dbname = ""
    if args.database == "external":
        database_url, dbname = await external_database(args.admin_dsn)
    model_path = args.model_path or (str(MODEL_CACHE) if (MODEL_CACHE / "config.json").exists() else "")
    platform = Platform(data_dir, database_url, model_path)
    recorder = Recorder()
    samples: list[dict[str, Any]] = []
    report: dict[str, Any] = {"command": " ".join(["SOAK_MINUTES=" + str(args.minutes), ".venv/bin/python",
                                                   "benchmarks/soak.py", *sys.argv[1:]]),
                              "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              "minutes": args.minutes, "database": args.database, "concurrency": args.concurrency,
                              "data_dir": str(data_dir),
                              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                       text=True, cwd=ROOT).stdout.strip() or "unknown"}
    print(f"soak: {args.minutes} min, {args.concurrency} clients, {args.database} database, data dir {data_dir}",
          flush=True)
    checks: list[Check] = []
    traffic = dashboard = None
    try:
        report["up_seconds"] = round(platform.up(), 1)
        print(f"  platform up at {platform.url} in {report['up_seconds']} s", flush=True)
        db_before = await database_state(platform)
        traffic = Traffic(platform, recorder, args.seed)
        models = (await traffic.http.get("/v1/models")).json().get("data", [])
        # An embedding base model would be listed like any base model; the demo platform serves none.
        traffic.embed_model = next((m["id"] for m in models if m.get("task") == "embed"), None)
        dashboard = Dashboard(platform, recorder)
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(platform, samples, stop))
        begin = time.time()
        deadline = begin + seconds
        warm_end = begin + max(0.2 * seconds, 30.0)
        report["warm_up_seconds"] = round(warm_end - begin)
        jobs = [asyncio.create_task(traffic.client(index, deadline)) for index in range(args.concurrency)]
        jobs.append(asyncio.create_task(chores(traffic, dashboard, work / "adapters", deadline, seconds)))
        faults = asyncio.create_task(inject(platform, recorder, begin, seconds))
        progress = asyncio.create_task(_progress(recorder, begin, deadline))
        await asyncio.gather(*jobs)
        await faults    # a fault late in a short run may still be recovering
        progress.cancel()
        stop.set()
        await sampler
        report["traffic_seconds"] = round(time.time() - begin)
        print(f"  traffic done: {len(recorder.records)} requests in {report['traffic_seconds']} s", flush=True)

        admitted = {r.request_id for r in recorder.records if r.admitted and r.request_id}
        try:
            rows = await ledger_rows(platform, traffic.tenant, admitted)
            checks += check_ledger(recorder.records, rows)
        except Exception as exc:  # noqa: BLE001 - a database that died is a finding, not a crash of the soak
            checks += [Check("ledger rows = admitted requests", False, f"the ledger could not be read: {exc!r}"),
                       Check("usage = what clients saw", False, "the ledger could not be read")]
        checks += check_errors(recorder)
        checks += check_flat(samples, warm_end)
        checks.append(check_logs(platform, samples, seconds))
        try:
            db_after = await database_state(platform)
        except Exception as exc:  # noqa: BLE001
            db_after, report["database_error"] = None, repr(exc)[:300]
        checks.append(check_wal(db_before, db_after, sum(1 for _, name in SCHEDULE if name == "checkpoint")))
        checks.append(check_faults(recorder))
        checks.append(check_mix(recorder.records, traffic.embed_model))
        report["revocation_seconds_max"] = round(max(traffic.revocation_seconds, default=0), 2)
    finally:
        if traffic:
            await traffic.close()
        if dashboard:
            await dashboard.close()
        report["down"] = platform.down()
        if dbname:
            with contextlib.suppress(Exception):
                await drop_database(args.admin_dsn, dbname)
        checks.append(check_database_log(platform, external=bool(database_url)))
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    report["checks"] = [asdict(c) for c in checks]
    report["samples"] = samples
    report["requests"] = len(recorder.records)
    report["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    failed = [c for c in checks if not c.ok]
    write_report(args.out, report, checks, recorder, samples)
    print("\nsoak checks:")
    for check in checks:
        print(f"  {'PASS' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    print(f"\n{len(checks) - len(failed)}/{len(checks)} checks passed; report: {args.out}.md")
    return 1 if failed else 0


async def _progress(recorder: Recorder, begin: float, deadline: float) -> None:
    while time.time() < deadline:
        await asyncio.sleep(60)
        statuses = _count(r.status for r in recorder.records)
        print(f"  [{time.time() - begin:6.0f} s] {len(recorder.records)} requests, statuses {statuses}", flush=True)


def write_report(out: Path, report: dict[str, Any], checks: list[Check], recorder: Recorder,
                 samples: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {**report, "records": [asdict(r) for r in recorder.records], "windows": recorder.windows},
        indent=1, default=str))
    lines = ["# Soak", "",
             f"`{report['command']}` — {report['started']} UTC, commit `{report['commit']}`, {report['minutes']} min of traffic, "
             f"{report['concurrency']} concurrent clients (+ adapters, keys and dashboard chores), "
             f"{report['database']} database; platform started by `lorafleet up` in {report.get('up_seconds', '?')} s.",
             "",
             f"{sum(c.ok for c in checks)}/{len(checks)} checks passed. {report['requests']} client requests; "
             f"faults at {', '.join(f'{f:.0%} {n}' for f, n in SCHEDULE)} of the run; warm-up "
             f"{report.get('warm_up_seconds', '?')} s; samples every {SAMPLE_SECONDS:.0f} s.", "",
             "| check | result | figures |", "|---|---|---|"]
    for check in checks:
        lines.append(f"| {check.name} | {'pass' if check.ok else '**FAIL**'} | {check.detail.replace('|', '/')} |")
    lines += ["", "Requests by kind, model and status:", "", "| kind | model | status | count |", "|---|---|---|---|"]
    for key, count in _count(f"{r.kind}{' stream' if r.streamed else ''}\t{r.model}\t{r.status}"
                             for r in recorder.records).items():
        kind, model, status = key.split("\t")
        lines.append(f"| {kind} | {model} | {status} | {count} |")
    if samples:
        lines += ["", "Process trees (RSS MiB / open files), every sampled minute:", "",
                  "| t (s) | gateway | worker | logs KiB |", "|---|---|---|---|"]
        t0 = samples[0]["t"]
        shown = -60.0
        for s in samples:
            if s["t"] - t0 - shown >= 59 or s is samples[-1]:
                shown = s["t"] - t0
                cells = [f"{s[r]['rss'] / 2**20:,.0f} / {s[r]['fds']}" if s.get(r) else "—" for r in ("gateway", "worker")]
                lines.append(f"| {shown:.0f} | {cells[0]} | {cells[1]} | {s['logs_bytes'] / 1024:,.0f} |")
    lines += ["", "A 5xx or connection error is explained when it overlaps a fault window (engine kill: from the "
              "SIGKILL until the gateway is ready again; gateway restart: from the stop until `lorafleet up` returns; "
              f"each plus {RECOVERY_GRACE_SECONDS:.0f} s). Checkpoints open no window. Every record is in "
              f"`{out.name}.json`.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "30")),
                        help="Traffic time (default: SOAK_MINUTES, else 30).")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("SOAK_CONCURRENCY", "3")))
    parser.add_argument("--database", choices=["embedded", "external"], default=os.environ.get("SOAK_DATABASE", "embedded"),
                        help="embedded: what `lorafleet up` starts without LORAFLEET_DATABASE_URL (a user's first "
                             "minutes); external: a fresh database on --admin-dsn, dropped at the end.")
    parser.add_argument("--admin-dsn", default=os.environ.get("SOAK_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--model-path", default=os.environ.get("SOAK_MODEL_PATH", ""),
                        help="Base model folder (default: the prepared cache, else `lorafleet up` prepares one).")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak", help="Report path without suffix (.md, .json).")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="Keep the data dir (logs, pgdata) for inspection.")
    args = parser.parse_args()
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
