"""Gateway capacity against an instant upstream: LoraFleet vs LiteLLM's proxy vs direct.

An OpenAI-compatible stub (``lorafleet.devtools.stub_worker``) answers instantly, so only what
sits in front of it is measured. ``wrk`` (C, apt) drives each target with a fixed request at 1,
32 and 256 connections, JSON and SSE, for ``--seconds`` each (after a one-second warm-up):

- ``direct``: wrk → stub.
- ``lorafleet``: wrk → gateway → stub, with everything on: key auth, admission (the key has a
  rate limit and the tenant a spend limit: each request is admitted by its own statement and
  reservation), routing, relay and metering (a priced ledger row per request).
- ``lorafleet-unmetered``: the same gateway, a tenant without limits (admission skipped).
- ``litellm``: wrk → LiteLLM proxy (``litellm[proxy]``, installed into ``.venv-litellm`` only
  for this benchmark, master key, no database: its spend tracking needs Prisma engines
  downloaded from the internet, which this machine cannot reach) → stub.
- ``baseline`` / ``baseline-unmetered``: the gateway of an older commit (``--baseline REF``; by
  default the merge-base of HEAD and ``main``, or ``HEAD~1`` on ``main`` itself; ``--baseline none``
  skips it), checked out into a temporary folder and run from it with the same virtualenv and its
  own database, measured in the same run so the ratio is not spoiled by the machine's mood. A drop
  of more than 10% against it is reported as a regression (and the exit status is 3).

The proxy under test (gateway, or LiteLLM with one worker) is pinned to CPU 0, wrk and the stub
to CPU 1; PostgreSQL is not pinned. Requests/s of a proxy pinned to one core is its per-core
capacity. Added latency = proxy p50/p99 − direct p50/p99 at the same concurrency.

    .venv/bin/python benchmarks/gateway_capacity.py [--seconds 6] [--skip-litellm] [--baseline REF|none]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
from lorafleet.core import ids
from lorafleet.db import create_pool
from lorafleet.devtools.bench import publish
from lorafleet.devtools.database import DatabaseFactory, server_dsn
from lorafleet.devtools.services import free_port, platform_env, start_gateway

ROOT = Path(__file__).resolve().parents[1]
LITELLM_VENV = ROOT / ".venv-litellm"
MODEL = "stub-model"
CONCURRENCY = (1, 32, 256)
PROXY_CPU, LOAD_CPU = 0, 1


def pin(pid: int, cpu: int) -> None:
    import psutil

    process = psutil.Process(pid)
    for proc in [process, *process.children(recursive=True)]:
        try:
            proc.cpu_affinity([cpu])
        except psutil.Error:
            pass


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (apt) …", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, stdout=subprocess.DEVNULL)
    return shutil.which("wrk") or "wrk"


LITELLM_VERSION = "1.108.7"  # the version the committed results were measured with


def ensure_litellm() -> Path:
    python = LITELLM_VENV / "bin" / "python"
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        print(f"installing litellm[proxy]=={LITELLM_VERSION} into .venv-litellm (benchmark only) …", flush=True)
        if LITELLM_VENV.is_symlink():
            LITELLM_VENV.unlink()  # a link to a venv that is gone (venv cannot create over it)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    return LITELLM_VENV / "bin" / "litellm"


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNITS[unit]


def run_wrk(wrk: str, url: str, path: str, body: dict, secret: str, connections: int, seconds: int,
            workdir: Path) -> dict:
    script = workdir / "request.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {secret}"\n')
    base = ["taskset", "-c", str(LOAD_CPU), wrk, "-t", "1", "-c", str(connections), "-s", str(script), url + path]
    subprocess.run([*base[:6], "-d", "1s", *base[6:]], capture_output=True, text=True)  # warm-up
    # The warm-up's connections close with requests in flight: let the proxy settle them, or at 256
    # connections they briefly count against the per-tenant sequence cap of the timed run (429s).
    time.sleep(0.5)
    out = subprocess.run([*base[:6], "-d", f"{seconds}s", "--latency", "--timeout", "10s", *base[6:]],
                         capture_output=True, text=True).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    rps = float(found.group(1)) if found else 0.0  # a peer that collapsed is a result to print
    latency = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.MULTILINE)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:  # show what went wrong, once
        probe = httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
        print(f"    non-2xx from {url}: e.g. {probe.status_code} {probe.text[:300]}", flush=True)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": latency.get("50"), "p99": latency.get("99"),
            "non_2xx": int(errors.group(1)) if errors else 0, "socket_errors": socket_errors.group(1) if socket_errors else ""}


def checkout(ref: str, into: Path) -> Path:
    """The tree of an older commit, unpacked (not a worktree: nothing is registered in .git)."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def tree_env(env: dict[str, str], tree: Path | None) -> dict[str, str]:
    """Run a process on ``tree``'s code (the same virtualenv): its source roots first on the path."""
    if tree is None:
        return env
    # Older trees had three source roots; a root a tree lacks is skipped by the interpreter.
    roots = ":".join(str(tree / root) for root in ("platform", "workers", "billing"))
    return dict(env, PYTHONPATH=roots)


def cli_json(env: dict[str, str], *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "lorafleet.cli.main", *args, "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


async def prepare_gateway(databases: DatabaseFactory, label: str, stub_url: str, workdir: Path,
                          tree: Path | None) -> tuple[object, str, str, str, asyncpg.Pool]:
    """A database with the stub registered as a worker, a priced base model, a metered and an unmetered
    key (made with that tree's own CLI), and that tree's gateway: (gateway, metered, unmetered, tenant, pool)."""
    dsn = await databases.create(f"lorafleet_bench_{label}")
    env = tree_env(platform_env(dsn, workdir, workdir / label), tree)
    subprocess.run([sys.executable, "-m", "lorafleet.cli.main", "migrate"], env=env, check=True, capture_output=True)
    pool = await create_pool(dsn, max_size=2)
    base = await pool.fetchrow("INSERT INTO base_models (id, name, max_model_len, architecture, max_lora_rank) "
                               "VALUES ($1, $2, 4096, '{}', 16) RETURNING id", ids.base_model_id(), MODEL)
    await pool.execute("INSERT INTO prices (base_model_id, prompt_micro_usd_per_mtok, completion_micro_usd_per_mtok, "
                       "adapter_surcharge_micro_usd_per_mtok, effective_at) VALUES ($1, 150000, 600000, 0, now())",
                       base["id"])
    await pool.execute("INSERT INTO workers (url, base_model_id) VALUES ($1, $2)", stub_url, base["id"])
    keys = []
    for name in ("metered", "unmetered"):
        tenant = cli_json(env, "tenants", "create", f"{label}-{name}")
        keys.append((tenant["id"], cli_json(env, "keys", "create", "--tenant", tenant["id"])["secret"]))
    (metered_tenant, metered), (_, unmetered) = keys
    await pool.execute("UPDATE tenant_accounts SET monthly_spend_limit_micro_usd = 1000000000000000 "
                       "WHERE tenant_id = $1", metered_tenant)
    await pool.execute("UPDATE api_keys SET requests_per_minute = 10000000, tokens_per_minute = 2000000000 "
                       "WHERE tenant_id = $1", metered_tenant)
    gateway = await asyncio.to_thread(start_gateway, env, workdir, "/healthz")
    pin(gateway.process.pid, PROXY_CPU)
    return gateway, metered, unmetered, metered_tenant, pool


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--baseline", metavar="REF", default=None,
                        help="also measure the gateway of this older commit (default: merge-base with main; 'none': skip)")
    args = parser.parse_args()
    args.baseline = default_baseline() if args.baseline is None else (None if args.baseline == "none" else args.baseline)
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two CPUs: one for the proxy, one for the load generator and the stub")
    wrk = ensure_wrk()
    litellm = None if args.skip_litellm else ensure_litellm()

    workdir = Path(tempfile.mkdtemp(prefix="lorafleet-bench-capacity-"))
    databases = DatabaseFactory(await server_dsn(workdir / "pgdata"))
    processes: list[subprocess.Popen] = []
    gateways: list = []
    pools: list[asyncpg.Pool] = []
    heartbeat: asyncio.Task | None = None
    results: dict[str, dict] = {}
    try:
        stub_port = free_port()
        stub_url = f"http://127.0.0.1:{stub_port}"
        stub = subprocess.Popen([sys.executable, "-m", "lorafleet.devtools.stub_worker", "--port", str(stub_port),
                                 "--model", MODEL], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(stub)
        wait_http(stub_url + "/health")
        pin(stub.pid, LOAD_CPU)

        targets = {"direct": (stub_url, "none")}
        metered_tenants = {}
        trees = {"lorafleet": None}
        if args.baseline:
            trees["baseline"] = checkout(args.baseline, workdir / "baseline-tree")
        for label, tree in trees.items():
            gateway, metered, unmetered, tenant, pool = await prepare_gateway(databases, label, stub_url, workdir, tree)
            gateways.append(gateway)
            pools.append(pool)
            targets[label] = (gateway.url, metered)
            targets[f"{label}-unmetered"] = (gateway.url, unmetered)
            metered_tenants[label] = (tenant, pool)

        async def beat() -> None:
            while True:
                await asyncio.sleep(2)
                for pool in pools:
                    await pool.execute("UPDATE workers SET heartbeat_at = now() WHERE url = $1", stub_url)

        heartbeat = asyncio.create_task(beat())

        if litellm is not None:
            litellm_port = free_port()
            config = workdir / "litellm.yaml"
            config.write_text(
                "model_list:\n"
                f"  - model_name: {MODEL}\n"
                "    litellm_params:\n"
                f"      model: openai/{MODEL}\n"
                f"      api_base: {stub_url}/v1\n"
                "      api_key: stub\n"
                "general_settings:\n"
                "  master_key: sk-bench-master\n")
            litellm_env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
            proxy = subprocess.Popen([str(litellm), "--config", str(config), "--port", str(litellm_port),
                                      "--num_workers", "1"], env=litellm_env, stdout=open(workdir / "litellm.log", "wb"),
                                     stderr=subprocess.STDOUT)
            processes.append(proxy)
            # In a thread, as every blocking call below: the stub's heartbeat task must keep running, or
            # the gateways see their only worker go silent while LiteLLM starts and hold requests.
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{litellm_port}/health/liveliness", 180)
            pin(proxy.pid, PROXY_CPU)
            targets["litellm"] = (f"http://127.0.0.1:{litellm_port}", "sk-bench-master")

        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
        for name, (url, secret) in targets.items():  # every target must answer 200 before it is timed
            deadline = time.monotonic() + 30
            while True:
                probe = await asyncio.to_thread(httpx.post, url + "/v1/chat/completions", json=body, timeout=30,
                                                headers={"Authorization": f"Bearer {secret}"})
                if probe.status_code == 200:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} answered {probe.status_code}: {probe.text[:500]}")
                await asyncio.sleep(0.5)
        for mode, extra in (("json", {}), ("stream", {"stream": True})):
            for connections in CONCURRENCY:
                for name, (url, secret) in targets.items():
                    # In a thread: the stub's heartbeat task must keep running while wrk does.
                    result = await asyncio.to_thread(run_wrk, wrk, url, "/v1/chat/completions", {**body, **extra},
                                                     secret, connections, args.seconds, workdir)
                    results[f"{name}|{mode}|{connections}"] = result
                    print(f"  {mode:<6} c={connections:<3} {name:<20} {result['rps']:>8,.0f} req/s  "
                          f"p50 {fmt_ms(result['p50'])}  p99 {fmt_ms(result['p99'])}"
                          + (f"  NON-2XX {result['non_2xx']}" if result["non_2xx"] else ""), flush=True)
        tenant, pool = metered_tenants["lorafleet"]
        ledger_rows = await pool.fetchval("SELECT count(*) FROM usage_ledger WHERE tenant_id = $1", tenant)
        left = await pool.fetchrow("SELECT reserved_micro_usd, in_flight FROM tenant_accounts WHERE tenant_id = $1",
                                   tenant)
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
        for gateway in gateways:
            gateway.stop()
        for process in processes:
            process.terminate()
            process.wait(20)
        for pool in pools:
            await pool.close()
        await databases.drop_all()

    litellm_version = ""
    if litellm is not None:
        litellm_version = subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-c",
                                          "import importlib.metadata as m; print(m.version('litellm'))"],
                                         capture_output=True, text=True).stdout.strip()
    write_report(results, args, litellm_version, ledger_rows, left)


def fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} ms"


def ratio(ours: dict | None, theirs: dict | None) -> str:
    """ours ÷ theirs, or what stands in for it when a peer served nothing (that is a result, not a crash)."""
    if not ours or not theirs:
        return "—"
    if theirs["rps"] <= 0:
        return "∞ (peer served 0 req/s)"
    return f"{ours['rps'] / theirs['rps']:.1f}×"


def added(ours: dict, direct: dict) -> str:
    if ours["p50"] is None or ours["p99"] is None or direct["p50"] is None or direct["p99"] is None:
        return "—"
    return f"{ours['p50'] - direct['p50']:+.2f} / {ours['p99'] - direct['p99']:+.2f}"


def write_report(results: dict, args: argparse.Namespace, litellm_version: str, ledger_rows: int, left) -> None:
    order = ["direct", "lorafleet", "lorafleet-unmetered", "baseline", "baseline-unmetered", "litellm"]
    names = sorted({key.split("|")[0] for key in results}, key=order.index)
    baseline = "baseline" in names
    command = (f"`.venv/bin/python benchmarks/gateway_capacity.py --seconds {args.seconds}"
               f"{' --skip-litellm' if args.skip_litellm else ''}{f' --baseline {args.baseline}' if baseline else ''}`")
    lines = ["# Gateway capacity (instant upstream)", "",
             f"{command} — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
             f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, Python {platform.python_version()}"
             + (f", LiteLLM {litellm_version}" if litellm_version else "") + ".", "",
             "Proxy pinned to CPU 0 (so its requests/s is per core); wrk and the stub on CPU 1; PostgreSQL unpinned. "
             "POST /v1/chat/completions, `max_tokens` 8; stream = SSE with 8 content chunks + usage. "
             "Metered: the key has a rate limit and the tenant a spend limit, and every request is admitted against them, one statement each"
             + (f"; baseline = the gateway of commit `{args.baseline}`, measured in this run." if baseline else "."), ""]
    for mode in ("json", "stream"):
        extra = " | ÷ baseline, metered | ÷ baseline, unmetered" if baseline else ""
        lines += [f"## {mode}", "", "| connections | " + " | ".join(f"{n} req/s" for n in names)
                  + " | lorafleet ÷ litellm" + extra + " | added p50 / p99 ms, metered | added p50 / p99 ms, unmetered |",
                  "|---" * (len(names) + 4 + (2 if baseline else 0)) + "|"]
        for connections in CONCURRENCY:
            row = [results[f"{n}|{mode}|{connections}"] for n in names]
            get = lambda name: results.get(f"{name}|{mode}|{connections}")  # noqa: E731, B023 - used in this iteration
            ours, direct, free = get("lorafleet"), get("direct"), get("lorafleet-unmetered")
            cells = [f"{r['rps']:,.0f}" for r in row] + [ratio(ours, get("litellm"))]
            if baseline:
                cells += [ratio(ours, get("baseline")), ratio(free, get("baseline-unmetered"))]
            cells += [added(ours, direct), added(free, direct)]
            lines.append(f"| {connections} | " + " | ".join(cells) + " |")
        lines.append("")
    errors = {k: (v["non_2xx"], v["socket_errors"]) for k, v in results.items() if v["non_2xx"] or v["socket_errors"]}
    lines += [f"Metered requests recorded in the ledger: {ledger_rows:,}; reservations left after the run: "
              f"{left['reserved_micro_usd']} µUSD, {left['in_flight']} in flight.",
              f"Errors (non-2xx, socket): {errors or 'none'}.", ""]
    regressions = regressions_against_baseline(results) if baseline else []
    if baseline:
        lines += ["## Regression check (same run, ours ÷ baseline)", "",
                  *(regressions or [f"No drop of more than {REGRESSION_TOLERANCE:.0%} against the baseline."]), ""]
    publish("gateway_capacity", "\n".join(lines))
    if regressions:
        print("\n".join(["REGRESSION against the baseline:", *regressions]))
        raise SystemExit(3)


REGRESSION_TOLERANCE = 0.10  # run-to-run noise on this machine measured at a few percent


def regressions_against_baseline(results: dict[str, dict]) -> list[str]:
    """One line per (mode, connections, metered?) where ours is more than the tolerance below the baseline."""
    found = []
    for key, ours in results.items():
        name, mode, connections = key.split("|")
        if name not in ("lorafleet", "lorafleet-unmetered"):
            continue
        theirs = results.get(key.replace("lorafleet", "baseline", 1))
        if theirs and theirs["rps"] and ours["rps"] < (1 - REGRESSION_TOLERANCE) * theirs["rps"]:
            found.append(f"- {name} {mode} c={connections}: {ours['rps']:,.0f} req/s vs {theirs['rps']:,.0f} "
                         f"({ours['rps'] / theirs['rps']:.2f}×)")
    return found


def default_baseline() -> str | None:
    """The merge-base of HEAD and main (what this branch changes), or HEAD~1 when HEAD is on main."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        base = git("merge-base", "HEAD", "main")
        return git("rev-parse", "--short", base if base != head else "HEAD~1")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


if __name__ == "__main__":
    asyncio.run(main())
