"""Secret files are private from their first byte; each role's process gets only its own secrets."""

from __future__ import annotations

import os
import stat

import pytest
from lorafleet.cli.runtime import (
    DatabaseChoice,
    DatabaseSwitchRefused,
    RuntimeFiles,
    choose_database,
    effective_settings,
    write_private,
)
from lorafleet.cli.up import role_environment
from lorafleet.core.settings import CommonSettings, GatewaySettings, TrainerSettings, WorkerSettings, load_settings


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_secrets_file_is_created_owner_only(tmp_path):
    files = RuntimeFiles(tmp_path / "data")
    secrets = files.ensure_secrets()
    assert set(secrets) == {"internal_token", "admin_token"}
    assert _mode(files.secrets) == 0o600
    # Others may traverse the data dir (the embedded server's own user must reach pgdata) but not list it.
    assert _mode(files.root) == 0o711


def test_an_existing_world_readable_file_is_replaced_not_rewritten(tmp_path):
    target = tmp_path / "demo.env"
    target.write_text("old")
    target.chmod(0o644)
    old_inode = os.stat(target).st_ino
    write_private(target, "LORAFLEET_API_KEY=secret\n")
    assert _mode(target) == 0o600
    assert os.stat(target).st_ino != old_inode, "the secret must never land in the old, readable inode"
    assert target.read_text() == "LORAFLEET_API_KEY=secret\n"


def test_a_worker_process_never_receives_the_admin_token(monkeypatch):
    monkeypatch.setenv("LORAFLEET_ADMIN_TOKEN", "admin-secret")
    monkeypatch.setenv("LORAFLEET_STRIPE_API_KEY", "sk_stripe")
    monkeypatch.setenv("LORAFLEET_METRICS_TOKEN", "metrics-secret")
    environ = {"LORAFLEET_DATABASE_URL": "postgresql://db/x", "LORAFLEET_INTERNAL_TOKEN": "internal",
               "LORAFLEET_ADMIN_TOKEN": "admin-secret"}
    worker = role_environment("worker", load_settings(WorkerSettings, environ))
    assert worker["LORAFLEET_INTERNAL_TOKEN"] == "internal" and worker["LORAFLEET_DATABASE_URL"] == "postgresql://db/x"
    assert not {"LORAFLEET_ADMIN_TOKEN", "LORAFLEET_STRIPE_API_KEY", "LORAFLEET_METRICS_TOKEN"} & set(worker)
    assert "admin-secret" not in worker.values()
    gateway = role_environment("gateway", load_settings(GatewaySettings, environ))
    assert gateway["LORAFLEET_ADMIN_TOKEN"] == "admin-secret" and gateway["LORAFLEET_METRICS_TOKEN"] == "metrics-secret"
    trainer = role_environment("trainer", load_settings(TrainerSettings, environ))
    # The internal token: a trainer pre-warms what it trained onto the workers, as a gateway would.
    assert trainer["LORAFLEET_DATABASE_URL"] == "postgresql://db/x" and trainer["LORAFLEET_INTERNAL_TOKEN"] == "internal"
    assert not {"LORAFLEET_ADMIN_TOKEN", "LORAFLEET_STRIPE_API_KEY", "LORAFLEET_METRICS_TOKEN"} & set(trainer)


def test_the_database_is_remembered_with_the_secrets_owner_only(tmp_path):
    files = RuntimeFiles(tmp_path / "data")
    files.ensure_secrets()
    assert files.remembered_database() is None
    files.remember_database(DatabaseChoice("external", "postgresql://app:pw@db.internal/lorafleet"))
    assert _mode(files.secrets) == 0o600
    assert files.remembered_database() == DatabaseChoice("external", "postgresql://app:pw@db.internal/lorafleet")
    assert set(files.read_secrets()) == {"internal_token", "admin_token", "database", "database_url"}
    settings = effective_settings(GatewaySettings, load_settings(GatewaySettings, {"LORAFLEET_DATA_DIR": str(files.root)}))
    assert settings.database_url == "postgresql://app:pw@db.internal/lorafleet"
    assert settings.admin_token == files.read_secrets()["admin_token"]  # the generated tokens, for roles that have them
    worker = effective_settings(WorkerSettings, load_settings(WorkerSettings, {"LORAFLEET_DATA_DIR": str(files.root)}))
    assert worker.internal_token == files.read_secrets()["internal_token"] and not hasattr(worker, "admin_token")
    given = load_settings(CommonSettings, {"LORAFLEET_DATA_DIR": str(files.root),
                                           "LORAFLEET_DATABASE_URL": "postgresql://other/x"})
    assert effective_settings(CommonSettings, given).database_url == "postgresql://other/x"  # the environment still wins


def test_an_older_data_dir_counts_as_embedded(tmp_path):
    files = RuntimeFiles(tmp_path / "data")
    files.root.mkdir()
    files.legacy_database_url.write_text("postgresql://postgres:@/postgres?host=/somewhere\n")
    assert files.remembered_database() == DatabaseChoice("embedded", "postgresql://postgres:@/postgres?host=/somewhere")
    files.legacy_database_url.unlink()
    (files.pgdata).mkdir()
    (files.pgdata / "PG_VERSION").write_text("16\n")
    assert files.remembered_database() == DatabaseChoice("embedded")


EXTERNAL = DatabaseChoice("external", "postgresql://app:secret@db.internal/lorafleet")
EMBEDDED = DatabaseChoice("embedded", "postgresql://postgres:@/postgres?host=/data/pgdata")


def test_the_first_up_decides_and_later_ones_keep_the_database():
    assert choose_database("", None) == DatabaseChoice("embedded")
    assert choose_database(EXTERNAL.url, None) == EXTERNAL
    assert choose_database("", EXTERNAL) == EXTERNAL  # never silently an embedded server instead
    assert choose_database(EXTERNAL.url, EXTERNAL) == EXTERNAL
    assert choose_database("", EMBEDDED) == DatabaseChoice("embedded")


@pytest.mark.parametrize("remembered", [EXTERNAL, EMBEDDED], ids=["external", "embedded"])
def test_another_database_is_refused_unless_switching(remembered):
    other = "postgresql://app:hunter2@elsewhere/lorafleet"
    with pytest.raises(DatabaseSwitchRefused) as refused:
        choose_database(other, remembered)
    message = str(refused.value)
    assert "--switch-database" in message and "SWITCH_DATABASE=1" in message and "make down" in message
    assert "hunter2" not in message and "secret" not in message  # passwords are not printed
    assert choose_database(other, remembered, switch=True) == DatabaseChoice("external", other)
    assert choose_database("", EXTERNAL, switch=True) == DatabaseChoice("embedded")


def test_stop_ends_with_sigterm_what_the_process_left_behind(tmp_path):
    """A worker killed before it could stop its engine (own process group) leaves it running: `down` ends it too."""
    import subprocess
    import sys

    import psutil
    from lorafleet.cli.runtime import stop_process

    marker = tmp_path / "engine-got-sigterm"
    engine = (f"import signal, sys, time, pathlib\n"
              f"signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({str(marker)!r}).write_text('1'), sys.exit(0)))\n"
              f"print('ready', flush=True)\n"
              f"time.sleep(600)\n")
    worker = ("import signal, subprocess, sys, time\n"
              f"engine = subprocess.Popen([sys.executable, '-c', {engine!r}], start_new_session=True, stdout=subprocess.PIPE)\n"
              "engine.stdout.readline()\n"
              "print(engine.pid, flush=True)\n"
              "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exits without stopping its engine\n"
              "time.sleep(600)\n")
    # Named like the processes `lorafleet up` starts (an argument the script ignores).
    parent = subprocess.Popen([sys.executable, "-c", worker, "lorafleet.cli.main"], stdout=subprocess.PIPE, text=True)
    engine_pid = int(parent.stdout.readline())
    pid_file = tmp_path / "worker.pid"
    pid_file.write_text(str(parent.pid))
    try:
        assert stop_process(pid_file, grace_seconds=20) is True
        assert parent.wait(5) == 0
        assert marker.read_text() == "1"  # asked to stop (SIGTERM), not killed
        assert not psutil.pid_exists(engine_pid) or psutil.Process(engine_pid).status() == psutil.STATUS_ZOMBIE
        assert not pid_file.exists() and stop_process(pid_file) is False  # a second stop: nothing to do
    finally:
        for pid in (parent.pid, engine_pid):
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass


def test_a_pid_file_naming_another_program_is_not_ours(tmp_path):
    import subprocess
    import sys

    from lorafleet.cli.runtime import pid_alive

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file = tmp_path / "gateway.pid"
        pid_file.write_text(str(other.pid))  # alive, but not a process `lorafleet up` started
        assert pid_alive(pid_file) is None
    finally:
        other.kill()
        other.wait()
