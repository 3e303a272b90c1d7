"""Secret files are private from their first byte; each role's process gets only its own secrets."""

from __future__ import annotations

import os
import stat

from lorafleet.cli.runtime import RuntimeFiles, write_private
from lorafleet.cli.up import role_environment
from lorafleet.core.settings import load_settings


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_secrets_file_is_created_owner_only(tmp_path):
    files = RuntimeFiles(tmp_path / "data")
    secrets = files.ensure_secrets()
    assert set(secrets) == {"internal_token", "admin_token"}
    assert _mode(files.secrets) == 0o600
    assert _mode(files.root) == 0o700


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
    settings = load_settings({"LORAFLEET_DATABASE_URL": "postgresql://db/x", "LORAFLEET_INTERNAL_TOKEN": "internal",
                              "LORAFLEET_ADMIN_TOKEN": "admin-secret"})
    worker = role_environment("worker", settings)
    assert worker["LORAFLEET_INTERNAL_TOKEN"] == "internal" and worker["LORAFLEET_DATABASE_URL"] == "postgresql://db/x"
    assert not {"LORAFLEET_ADMIN_TOKEN", "LORAFLEET_STRIPE_API_KEY", "LORAFLEET_METRICS_TOKEN"} & set(worker)
    assert "admin-secret" not in worker.values()
    gateway = role_environment("gateway", settings)
    assert gateway["LORAFLEET_ADMIN_TOKEN"] == "admin-secret" and gateway["LORAFLEET_METRICS_TOKEN"] == "metrics-secret"
