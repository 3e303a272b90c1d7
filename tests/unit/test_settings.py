import re
from pathlib import Path

import pytest
from lorafleet.core.settings import (
    SettingsError,
    documented_settings,
    load_settings,
    settings_markdown,
)


def test_defaults_and_env_override():
    settings = load_settings({"LORAFLEET_GATEWAY_PORT": "9100", "LORAFLEET_KEY_CACHE_SECONDS": "0.25"})
    assert settings.gateway_port == 9100
    assert settings.key_cache_seconds == 0.25
    assert load_settings({}).model_name == "SmolLM2-135M-Instruct"


def test_bad_value_names_the_variable():
    with pytest.raises(SettingsError, match="LORAFLEET_GATEWAY_PORT"):
        load_settings({"LORAFLEET_GATEWAY_PORT": "not-a-port"})
    with pytest.raises(SettingsError, match="LORAFLEET_KEY_CACHE_SECONDS"):
        load_settings({"LORAFLEET_KEY_CACHE_SECONDS": "5"})  # would let revoked keys live past 1 s


def test_every_setting_is_documented_in_the_readme():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = set(re.findall(r"`(LORAFLEET_[A-Z0-9_]+)`", readme))
    for name, _default, description in documented_settings():
        assert description, f"{name} has no description"
        assert name in documented, f"{name} is missing from the README's settings table"


def test_the_readme_table_is_the_generated_one():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert settings_markdown() in readme, "regenerate it: lorafleet settings --markdown"
