"""Fixtures of the trainer tests: a tiny random Llama with SmolLM2's tokenizer and template, and data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_llama import build_tiny_llama


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", model_path)
