"""`lorafleet up` / `lorafleet down`: the whole platform on one machine, in the background."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import msgspec
from lorafleet.cli.runtime import (
    DatabaseChoice,
    DatabaseSwitchRefused,
    RuntimeFiles,
    choose_database,
    effective_settings,
    pid_alive,
    redact,
    secure_data_dir,
    stop_process,
    wait_for_exit,
    write_private,
)
from lorafleet.core.settings import (
    CommonSettings,
    FleetSettings,
    GatewaySettings,
    LauncherSettings,
    TrainerSettings,
    WorkerSettings,
    get_settings,
)

READY_TIMEOUT_SECONDS = 600
DEMO_TENANT = "demo"


def _step(message: str) -> None:
    click.echo(click.style("==> ", fg="cyan") + message, err=True)


# Each role gets its own secrets and no other: a worker never holds the admin token.
ROLE_SECRETS = {"gateway": ("database_url", "internal_token", "admin_token"),
                "worker": ("database_url", "internal_token"),
                # reads jobs and files, writes adapters and the ledger; the internal token pre-warms
                # what it trained onto the workers (trainer/runner.py, _prewarm): never the admin token
                "trainer": ("database_url", "internal_token")}
ALL_SECRETS = ("LORAFLEET_ADMIN_TOKEN", "LORAFLEET_INTERNAL_TOKEN", "LORAFLEET_METRICS_TOKEN",
               "LORAFLEET_STRIPE_API_KEY", "LORAFLEET_DATABASE_URL")


@dataclass(frozen=True, slots=True)
class Platform:
    """What `lorafleet up` needs of each process it runs, each role's settings read on their own."""

    launcher: LauncherSettings
    gateway: GatewaySettings
    worker: WorkerSettings
    trainer: TrainerSettings

    def role(self, role: str) -> FleetSettings:
        return {"gateway": self.gateway, "trainer": self.trainer}.get(role, self.worker)


def role_environment(role: str, settings: FleetSettings) -> dict[str, str]:
    """The environment of a process of ``role``, given that role's settings."""
    env = {name: value for name, value in os.environ.items() if name not in ALL_SECRETS}
    env.update({f"LORAFLEET_{field.upper()}": getattr(settings, field) for field in ROLE_SECRETS[role]})
    if role == "gateway":
        for name in ("LORAFLEET_METRICS_TOKEN", "LORAFLEET_STRIPE_API_KEY"):
            if name in os.environ:
                env[name] = os.environ[name]
    env["LORAFLEET_DATA_DIR"] = str(settings.data_path)
    return env


def process_names(settings: LauncherSettings) -> list[str]:
    """What `lorafleet up` runs: the workers (``worker``, ``worker-2`` …), the gateway, the trainer."""
    return ["worker", *(f"worker-{index}" for index in range(2, settings.workers + 1)), "gateway", "trainer"]


def _role(name: str) -> str:
    return name if name in ("gateway", "trainer") else "worker"


def _spawn(name: str, files: RuntimeFiles, platform: Platform) -> int:
    role = _role(name)
    env = role_environment(role, platform.role(role))
    if role == "worker":
        index = 1 if name == "worker" else int(name.rsplit("-", 1)[1])
        env["LORAFLEET_WORKER_PORT"] = str(platform.worker.worker_port + index - 1)  # its own port and adapter cache
        if platform.launcher.workers > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            # vLLM's CPU backend binds each engine to the same core by default: spread them over the cores.
            env["VLLM_CPU_OMP_THREADS_BIND"] = str((index - 1) % (os.cpu_count() or 1))
    with _log_pipe(name, files, platform.launcher) as log_input:
        process = subprocess.Popen(
            [sys.executable, "-m", "lorafleet.cli.main", role], env=env, stdout=log_input, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    files.pid_file(name).write_text(str(process.pid))
    return process.pid


@contextlib.contextmanager
def _log_pipe(name: str, files: RuntimeFiles, settings: LauncherSettings) -> Iterator[int]:
    """The write end of a pipe into ``name``'s log: a rotating writer (lorafleet.core.logfiles) reads it,
    so the log stays under LOG_MAX_BYTES × (LOG_BACKUPS + 1) however long the process runs. The
    writer has its own session (a Ctrl-C here does not reach it) and ends when the process and
    everything it started have closed the pipe."""
    files.logs.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    try:
        writer = subprocess.Popen(
            [sys.executable, "-m", "lorafleet.core.logfiles", str(files.log_file(name)), str(settings.log_max_bytes),
             str(settings.log_backups)],
            stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        files.log_writer_pid_file(name).write_text(str(writer.pid))
        yield write_end
    finally:
        os.close(read_end)
        os.close(write_end)


def _gateway_url(settings: GatewaySettings) -> str:
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
        while not _ready(url, sum(_role(name) == "worker" for name in names)):
            for name in names:
                if pid_alive(files.pid_file(name)) is None:
                    raise click.ClickException(f"the {name} exited; its log ends with:\n{_tail(files.log_file(name))}")
            elapsed = int(time.monotonic() - started)
            if elapsed > READY_TIMEOUT_SECONDS:
                raise click.ClickException(f"not ready after {READY_TIMEOUT_SECONDS} s; see {files.logs}")
            bar.update(elapsed - last)
            last = elapsed
            time.sleep(1)
    click.echo(f"    ready after {time.monotonic() - started:.0f} s", err=True)


DEMO_ADAPTER = "demo-adapter"


def _demo_adapter(url: str, secret: str, settings: WorkerSettings, files: RuntimeFiles) -> None:
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


async def _demo_key(settings: CommonSettings, files: RuntimeFiles) -> tuple[str, str]:
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


# µUSD per million tokens; training: trained and validation tokens of fine-tuning jobs (a 48-example × 6-epoch
# job of ~60 tokens an example costs ~0.02 USD at this price).
DEMO_PRICE = {"prompt": 100_000, "completion": 200_000, "adapter_surcharge": 50_000, "training": 1_000_000}


async def _demo_billing(settings: WorkerSettings, tenant_id: str) -> str:
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


def _running(files: RuntimeFiles) -> list[str]:
    return [path.stem for path in sorted(files.root.glob("*.pid")) if pid_alive(path) is not None]


def _database(base: CommonSettings, files: RuntimeFiles, switch: bool) -> str:
    """Reach the platform's database (starting the embedded one if it is that), remember it, return its DSN."""
    from lorafleet.db.embedded import start_embedded

    remembered = files.remembered_database()
    try:
        choice = choose_database(base.database_url, remembered, switch)
    except DatabaseSwitchRefused as exc:
        raise click.ClickException(str(exc)) from None
    if remembered is not None and not remembered.same_database(choice):
        if running := _running(files):
            raise click.ClickException(f"The {', '.join(running)} still run on the platform's current database: "
                                       "stop them first (`make down`), then switch.")
        _step(f"switching the platform's database from {remembered.kind} to {choice.kind}")
    if choice.kind == "embedded":
        choice = DatabaseChoice("embedded", start_embedded(files.pgdata))
        # pgserver opens every folder above pgdata to others (go+rx) when it runs as root; take
        # listing away from the data dir again (traversal stays: see DATA_DIR_MODE).
        secure_data_dir(files.root)
        click.echo(f"    embedded PostgreSQL under {files.pgdata}", err=True)
    else:
        click.echo(f"    PostgreSQL at {redact(choice.url)} (remembered in {files.secrets})", err=True)
    files.remember_database(choice)
    return choice.url


def start_database(base: CommonSettings, switch: bool = False) -> str:
    """What `lorafleet up` does first: the data dir with its secrets, then the database; returns its DSN."""
    files = RuntimeFiles(base.data_path)
    secure_data_dir(files.root)
    files.ensure_secrets()
    _step("database")
    return _database(base, files, switch)


def _bin(name: str) -> str:
    """A console script of this installation by its full path, so printed commands work from any shell."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def run_up(switch_database: bool = False) -> None:
    from lorafleet.db.migrate import migrate

    base = get_settings(LauncherSettings)
    files = RuntimeFiles(base.data_path)
    start_database(base, switch_database)
    # Each role's settings, what the environment leaves empty filled from the data dir (the database
    # just remembered, the generated tokens).
    platform = Platform(*(effective_settings(kind, msgspec.structs.replace(get_settings(kind), database_url=""))
                          for kind in (LauncherSettings, GatewaySettings, WorkerSettings, TrainerSettings)))
    worker = platform.worker
    applied = asyncio.run(migrate(platform.launcher.database_url))
    click.echo(f"    migrations applied: {', '.join(applied) or 'none pending'}", err=True)

    _step(f"model {worker.model_name}")
    if not worker.model_path:
        # Model preparation is lorafleet-workers' (`lorafleet models prepare`); a command, not an import,
        # so the platform's CLI needs nothing of the engine side. Its progress goes to stderr as it comes.
        prepared = subprocess.run([sys.executable, "-m", "lorafleet.cli.main", "models", "prepare"],
                                  stdin=subprocess.DEVNULL, check=False)
        if prepared.returncode:
            raise click.ClickException(f"`lorafleet models prepare` failed (exit status {prepared.returncode})")

    url = _gateway_url(platform.gateway)
    names = process_names(platform.launcher)
    for name in names:
        pid = pid_alive(files.pid_file(name))
        if pid is None:
            _step(f"starting the {name} (log: {files.log_file(name)})")
            _spawn(name, files, platform)
        else:
            _step(f"the {name} is already running (pid {pid})")
    _wait_ready(url, files, names)

    _step("demo tenant, key and adapter")
    tenant_id, secret = asyncio.run(_demo_key(platform.launcher, files))
    login_token = asyncio.run(_demo_billing(worker, tenant_id))
    _demo_adapter(url, secret, worker, files)
    write_private(files.demo_env,
        f"LORAFLEET_BASE_URL={url}\nLORAFLEET_API_KEY={secret}\nLORAFLEET_ADMIN_TOKEN={platform.gateway.admin_token}\n"
        f"LORAFLEET_MODEL={worker.model_name}\nLORAFLEET_DEMO_TENANT={tenant_id}\nLORAFLEET_DEMO_ADAPTER={DEMO_ADAPTER}\n"
    )
    python, lorafleet = _bin("python"), _bin("lorafleet")
    click.echo(f"""
LoraFleet is up at {url}  (settings and secrets: {files.demo_env})

In any shell, load the settings first (the examples read them from the environment):

  set -a; . {files.demo_env}; set +a

  curl {url}/v1/chat/completions \\
    -H "Authorization: Bearer $LORAFLEET_API_KEY" -H "Content-Type: application/json" \\
    -d '{{"model": "{worker.model_name}", "messages": [{{"role": "user", "content": "Hi"}}]}}'

  {python} - <<'PY'
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

  # the operator's CLI (`. {Path(python).parent}/activate` puts lorafleet and python on the PATH):
  {lorafleet} keys list --tenant {tenant_id}

Dashboard: {url}/dashboard/login/{login_token}
  (one-time link, 15 minutes; afterwards sign in with $LORAFLEET_API_KEY, or `{lorafleet} dashboard link --tenant {tenant_id}`)

API docs: {url}/openapi (served by the gateway, works offline)   metrics: {url}/metrics   stop: make down
""")


def run_down() -> None:
    from lorafleet.db.embedded import stop_embedded

    settings = get_settings(WorkerSettings)  # the data dir, and how long a worker drains
    files = RuntimeFiles(settings.data_path)
    stopped: list[str] = []
    # The gateway first (no new requests), then the workers (each drains, then stops its engine).
    workers = sorted(path.stem for path in files.root.glob("worker*.pid"))
    # The trainer hands its job back to the queue (it resumes from its last checkpoint on the next `up`).
    for name, grace in (("gateway", 45.0), ("trainer", 60.0),
                        *((worker, settings.worker_drain_seconds + 60.0) for worker in workers)):
        if stop_process(files.pid_file(name), grace):
            _step(f"stopped the {name}")
            stopped.append(name)
    # Each log writer ends by itself once its process tree has closed the pipe.
    for pid_file in sorted(files.logs.glob("*.log.pid")) if files.logs.exists() else ():
        wait_for_exit(pid_file, 10.0)
    try:
        if stop_embedded(files.pgdata):
            _step("stopped the embedded database (fast shutdown: it wrote its shutdown checkpoint)")
            stopped.append("database")
    except PermissionError as exc:
        raise click.ClickException(str(exc)) from None
    if stopped:
        _step("down")
    else:
        _step(f"nothing to stop: no process of the platform under {files.root} is running (already down)")
