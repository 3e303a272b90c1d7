import re
from pathlib import Path

import msgspec
import pytest
from lorafleet.core.settings import (
    ROLES,
    BillingSettings,
    CommonSettings,
    GatewaySettings,
    LauncherSettings,
    SettingsError,
    WorkerSettings,
    documented_settings,
    load_settings,
    settings_markdown,
)


def _names(kind: type) -> set[str]:
    return {field.name for field in msgspec.structs.fields(kind)}


def test_defaults_and_env_override():
    settings = load_settings(GatewaySettings, {"LORAFLEET_GATEWAY_PORT": "9100", "LORAFLEET_KEY_CACHE_SECONDS": "0.25"})
    assert settings.gateway_port == 9100
    assert settings.key_cache_seconds == 0.25
    assert load_settings(WorkerSettings, {}).model_name == "SmolLM2-135M-Instruct"


def test_bad_value_names_the_variable():
    with pytest.raises(SettingsError, match="LORAFLEET_GATEWAY_PORT"):
        load_settings(GatewaySettings, {"LORAFLEET_GATEWAY_PORT": "not-a-port"})
    with pytest.raises(SettingsError, match="LORAFLEET_KEY_CACHE_SECONDS"):
        load_settings(GatewaySettings, {"LORAFLEET_KEY_CACHE_SECONDS": "5"})  # would let revoked keys live past 1 s


def test_a_worker_cannot_load_the_operators_or_stripes_secrets():
    environ = {"LORAFLEET_ADMIN_TOKEN": "admin", "LORAFLEET_METRICS_TOKEN": "metrics", "LORAFLEET_STRIPE_API_KEY": "sk",
               "LORAFLEET_INTERNAL_TOKEN": "internal", "LORAFLEET_GATEWAY_PORT": "not-a-port"}
    worker = load_settings(WorkerSettings, environ)  # another role's variables are not even parsed
    assert worker.internal_token == "internal"
    assert not {"admin_token", "metrics_token", "stripe_api_key", "stripe_api_base"} & _names(WorkerSettings)
    assert not {"admin_token", "internal_token", "stripe_api_key"} & _names(LauncherSettings)
    assert not {"admin_token", "internal_token"} & _names(BillingSettings)
    assert "stripe_api_key" not in _names(GatewaySettings)
    assert not {"worker_port", "model_name", "engine_extra_args"} & _names(GatewaySettings)


def test_every_setting_belongs_to_exactly_one_role():
    """A field is declared once, by the role (or the shared base) that needs it."""
    declared = [name for _, name, _, _ in documented_settings()]
    assert len(declared) == len(set(declared))
    everything = set().union(*(_names(kind) for kind in ROLES))
    assert {f"LORAFLEET_{name.upper()}" for name in everything} == set(declared)
    assert all(issubclass(kind, CommonSettings) for kind in ROLES)


def test_every_setting_is_documented_in_the_readme():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = set(re.findall(r"`(LORAFLEET_[A-Z0-9_]+)`", readme))
    for _, name, _default, description in documented_settings():
        assert description, f"{name} has no description"
        assert name in documented, f"{name} is missing from the README's settings table"


def test_the_readme_table_is_the_generated_one():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert settings_markdown() in readme, "regenerate it: lorafleet settings --markdown"
