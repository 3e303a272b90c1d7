"""A test that cannot run on this machine is skipped locally, and fails under CI=true."""

from __future__ import annotations

import pytest

from tests.helpers import missing_capability


def test_a_missing_capability_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        missing_capability("no chromium")


def test_a_missing_capability_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no chromium"):
        missing_capability("no chromium")
