"""`lorafleet up` / `lorafleet down`: the whole platform on one machine, in the background."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click
from lorafleet.cli.runtime import (
    RuntimeFiles,
    effective_settings,
    pid_alive,
    stop_process,
    write_private,
)
from lorafleet.core.settings import Settings, get_settings

READY_TIMEOUT_SECONDS = 600
DEMO_TENANT = "demo"


def _step(message: str) -> None:
    click.echo(click.style("==> ", fg="cyan") + message, err=True)


# Each role gets its own secrets and no other: a worker never holds the admin token.
ROLE_SECRETS = {"gateway": ("database_url", "internal_token", "admin_token"),
                "worker": ("database_url", "internal_token")}
ALL_SECRETS = ("LORAFLEET_ADMIN_TOKEN", "LORAFLEET_INTERNAL_TOKEN", "LORAFLEET_METRICS_TOKEN",
               "LORAFLEET_STRIPE_API_KEY", "LORAFLEET_DATABASE_URL")


def role_environment(role: str, settings: Settings) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in ALL_SECRETS}
    env.update({f"LORAFLEET_{field.upper()}": getattr(settings, field) for field in ROLE_SECRETS[role]})
    if role == "gateway":
        for name in ("LORAFLEET_METRICS_TOKEN", "LORAFLEET_STRIPE_API_KEY"):
            if name in os.environ:
                env[name] = os.environ[name]
    env["LORAFLEET_DATA_DIR"] = str(settings.data_path)
    return env


def process_names(settings: Settings) -> list[str]:
    """What `lorafleet up` runs: the workers (``worker``, ``worker-2`` …), then the gateway."""
    return ["worker", *(f"worker-{index}" for index in range(2, settings.workers + 1)), "gateway"]


def _spawn(name: str, files: RuntimeFiles, settings: Settings) -> int:
    files.logs.mkdir(parents=True, exist_ok=True)
    role = "gateway" if name == "gateway" else "worker"
    env = role_environment(role, settings)
    if role == "worker":
        index = 1 if name == "worker" else int(name.rsplit("-", 1)[1])
        env["LORAFLEET_WORKER_PORT"] = str(settings.worker_port + index - 1)  # its own port and adapter cache
        if settings.workers > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            # vLLM's CPU backend binds each engine to the same core by default: spread them over the cores.
            env["VLLM_CPU_OMP_THREADS_BIND"] = str((index - 1) % (os.cpu_count() or 1))
    log_file = open(files.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [sys.executable, "-m", "lorafleet.cli.main", role], env=env, stdout=log_file, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    files.pid_file(name).write_text(str(process.pid))
    return process.pid


def _gateway_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.gateway_host in ("0.0.0.0", "::") else settings.gateway_host
    return f"http://{host}:{settings.gateway_port}"


def _ready(url: str, workers: int = 1) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz?workers={workers}", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _wait_ready(url: str, files: RuntimeFiles, names: list[str]) -> None:
    started = time.monotonic()
    with click.progressbar(length=READY_TIMEOUT_SECONDS, label="    waiting for the engine", file=sys.stderr,
                           show_eta=False, show_percent=False) as bar:
        last = 0
        while not _ready(url, len(names) - 1):
            for name in names:
                if pid_alive(files.pid_file(name)) is None:
                    raise click.ClickException(f"the {name} exited; its log ends with:\n{_tail(files.logs / f'{name}.log')}")
            elapsed = int(time.monotonic() - started)
            if elapsed > READY_TIMEOUT_SECONDS:
                raise click.ClickException(f"not ready after {READY_TIMEOUT_SECONDS} s; see {files.logs}")
            bar.update(elapsed - last)
            last = elapsed
            time.sleep(1)
    click.echo(f"    ready after {time.monotonic() - started:.0f} s", err=True)


DEMO_ADAPTER = "demo-adapter"


def _demo_adapter(url: str, secret: str, settings: Settings, files: RuntimeFiles) -> None:
    """Register a random rank-8 adapter for the demo tenant, once, through the public API."""
    import httpx
    from lorafleet.adapters.architecture import model_architecture
    from lorafleet.adapters.demo import write_random_adapter

    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        if DEMO_ADAPTER in {a["name"] for a in http.get("/v1/adapters").json().get("data", [])}:
            return
        folder = write_random_adapter(files.root / "demo-adapter", model_architecture(settings.resolved_model_path),
                                      settings.model_name)
        parts = [("file", (p.name, p.read_bytes())) for p in sorted(folder.iterdir())]
        response = http.post("/v1/adapters", data={"name": DEMO_ADAPTER, "base_model": settings.model_name}, files=parts)
        if response.status_code != 201:
            raise click.ClickException(f"demo adapter upload failed: {response.text}")


async def _demo_key(settings: Settings, files: RuntimeFiles) -> tuple[str, str]:
    """The demo tenant's key: the one in demo.env while it still works, else a new one."""
    import asyncpg
    from lorafleet.db import queries
    from lorafleet.tenancy import TenancyService, hash_secret

    connection = await asyncpg.connect(settings.database_url)
    try:
        service = TenancyService(connection)
        tenant = await service.find_tenant_by_name(DEMO_TENANT) or await service.create_tenant(DEMO_TENANT)
        previous = _read_env(files.demo_env).get("LORAFLEET_API_KEY", "")
        if previous:
            if await connection.fetchval(queries.key_is_active_for_tenant, hash_secret(previous), tenant.id):
                return tenant.id, previous
        created = await service.create_key(tenant.id, name="demo")
        return tenant.id, created.secret
    finally:
        await connection.close()


DEMO_PRICE = {"prompt": 100_000, "completion": 200_000, "adapter_surcharge": 50_000}  # µUSD per million tokens


async def _demo_billing(settings: Settings, tenant_id: str) -> str:
    """A price for the base model the first time (responses then show what they cost), and a
    one-time dashboard link for the demo tenant; returns the link's token."""
    import asyncpg
    from lorafleet.billing.accounts import AccountService
    from lorafleet.dashboard.sessions import create_login_link

    connection = await asyncpg.connect(settings.database_url)
    try:
        accounts = AccountService(connection)
        if not any(p.base_model == settings.model_name for p in await accounts.list_prices()):
            await accounts.set_price(settings.model_name, **DEMO_PRICE)
        return await create_login_link(connection, tenant_id)
    finally:
        await connection.close()


def _read_env(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value.strip().strip("'\"") for key, value in pairs}


def run_up() -> None:
    from lorafleet.db.embedded import start_embedded
    from lorafleet.db.migrate import migrate
    from lorafleet.models.prepare import prepare_smollm2

    base = get_settings()
    files = RuntimeFiles(base.data_path)
    files.root.mkdir(parents=True, exist_ok=True)
    files.ensure_secrets()

    _step("database")
    if not base.database_url:
        dsn = start_embedded(files.pgdata)
        write_private(files.database_url, dsn + "\n")
        click.echo(f"    embedded PostgreSQL under {files.pgdata}", err=True)
    settings = effective_settings(base)
    applied = asyncio.run(migrate(settings.database_url))
    click.echo(f"    migrations applied: {', '.join(applied) or 'none pending'}", err=True)

    _step(f"model {settings.model_name}")
    if not base.model_path:
        prepare_smollm2(settings.resolved_model_path, progress=lambda line: click.echo("    " + line, err=True))

    url = _gateway_url(settings)
    for name in process_names(settings):
        pid = pid_alive(files.pid_file(name))
        if pid is None:
            _step(f"starting the {name} (log: {files.logs / (name + '.log')})")
            _spawn(name, files, settings)
        else:
            _step(f"the {name} is already running (pid {pid})")
    _wait_ready(url, files, process_names(settings))

    _step("demo tenant, key and adapter")
    tenant_id, secret = asyncio.run(_demo_key(settings, files))
    login_token = asyncio.run(_demo_billing(settings, tenant_id))
    _demo_adapter(url, secret, settings, files)
    write_private(files.demo_env,
        f"LORAFLEET_BASE_URL={url}\nLORAFLEET_API_KEY={secret}\nLORAFLEET_ADMIN_TOKEN={settings.admin_token}\n"
        f"LORAFLEET_MODEL={settings.model_name}\nLORAFLEET_DEMO_TENANT={tenant_id}\nLORAFLEET_DEMO_ADAPTER={DEMO_ADAPTER}\n"
    )
    click.echo(f"""
LoraFleet is up at {url}  (settings and secrets: {files.demo_env})

  export $(cat {files.demo_env})

  curl {url}/v1/chat/completions \\
    -H "Authorization: Bearer $LORAFLEET_API_KEY" -H "Content-Type: application/json" \\
    -d '{{"model": "{settings.model_name}", "messages": [{{"role": "user", "content": "Hi"}}]}}'

  python - <<'PY'
import os
from openai import OpenAI
client = OpenAI(base_url=os.environ["LORAFLEET_BASE_URL"] + "/v1", api_key=os.environ["LORAFLEET_API_KEY"])
reply = client.chat.completions.create(model=os.environ["LORAFLEET_MODEL"],
                                       messages=[{{"role": "user", "content": "Hi"}}])
print(reply.choices[0].message.content)
PY

  # the demo tenant's LoRA adapter, by name:
  curl {url}/v1/completions -H "Authorization: Bearer $LORAFLEET_API_KEY" -H "Content-Type: application/json" \\
    -d '{{"model": "{DEMO_ADAPTER}", "prompt": "Once upon a time", "max_tokens": 16}}'

  # what it cost: the x-lorafleet-cost-micro-usd header on each response; usage and balance:
  curl "{url}/v1/usage?bucket=hour&group_by=model,adapter" -H "Authorization: Bearer $LORAFLEET_API_KEY"
  curl {url}/v1/balance -H "Authorization: Bearer $LORAFLEET_API_KEY"

Dashboard: {url}/dashboard/login/{login_token}
  (one-time link, 15 minutes; afterwards sign in with $LORAFLEET_API_KEY, or `lorafleet dashboard link --tenant {tenant_id}`)

API docs: {url}/openapi   metrics: {url}/metrics   stop: make down
""")


def run_down() -> None:
    from lorafleet.db.embedded import stop_embedded

    settings = get_settings()
    files = RuntimeFiles(settings.data_path)
    workers = sorted(path.stem for path in files.root.glob("worker*.pid"))
    for name in ("gateway", *workers):
        if stop_process(files.pid_file(name)):
            _step(f"stopped the {name}")
    if not settings.database_url and stop_embedded(files.pgdata):
        _step("stopped the embedded database")
    _step("down")
