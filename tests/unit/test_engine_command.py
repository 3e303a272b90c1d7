"""The engine's command line per worker role: tool calling for generation, the pooling runner for embeddings."""

from __future__ import annotations

import json
from pathlib import Path

from lorafleet.core.settings import WorkerSettings, load_settings
from lorafleet.worker.engine import engine_command
from lorafleet.worker.tools import CHATML_TOOLS_TEMPLATE, chat_template, model_template

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}")


def _model(folder: Path, template: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return folder


def _settings(model: Path, **env: str):
    return load_settings(WorkerSettings, {"LORAFLEET_MODEL_PATH": str(model), **env})


def _value(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def test_a_chatml_model_without_a_tools_section_gets_the_bundled_template(tmp_path):
    command = engine_command(_settings(_model(tmp_path / "m", CHATML)))
    assert _value(command, "--chat-template") == str(CHATML_TOOLS_TEMPLATE) and CHATML_TOOLS_TEMPLATE.is_file()
    assert _value(command, "--tool-call-parser") == "hermes" and "--enable-auto-tool-choice" in command
    assert _value(command, "--tool-strict-level") == "parameter"  # arguments always match the tool's schema
    assert "--enable-lora" in command and "--runner" not in command


def test_a_model_whose_template_renders_tools_keeps_its_own(tmp_path):
    own = "{% if tools %}{{ tools | tojson }}{% endif %}" + CHATML
    assert chat_template(_settings(_model(tmp_path / "m", own))) is None
    named = [{"name": "default", "template": own}, {"name": "tool_use", "template": own}]
    assert model_template(_model(tmp_path / "n", named)) == own


def test_a_non_chatml_model_is_left_alone_and_the_operator_decides(tmp_path):
    llama = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}{% endfor %}"
    model = _model(tmp_path / "m", llama)
    assert chat_template(_settings(model)) is None
    chosen = tmp_path / "mine.jinja"
    chosen.write_text(llama)
    command = engine_command(_settings(model, LORAFLEET_CHAT_TEMPLATE=str(chosen), LORAFLEET_TOOL_CALL_PARSER=""))
    assert _value(command, "--chat-template") == str(chosen.resolve())
    assert "--enable-auto-tool-choice" not in command and "--tool-call-parser" not in command


def test_an_unreadable_or_huge_tokenizer_config_means_no_template_not_a_crash(tmp_path):
    assert model_template(tmp_path / "missing") is None
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer_config.json").write_text("{not json")
    assert model_template(broken) is None
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "pad": "x" * (2 << 20)}))
    assert model_template(huge) is None


def test_an_embedding_worker_runs_the_pooling_runner_without_adapters_or_tools(tmp_path):
    command = engine_command(_settings(_model(tmp_path / "m", CHATML), LORAFLEET_WORKER_TASK="embed"))
    assert _value(command, "--runner") == "pooling" and _value(command, "--convert") == "embed"
    for flag in ("--enable-lora", "--max-loras", "--enable-auto-tool-choice", "--chat-template"):
        assert flag not in command


def test_constrained_decoding_is_pinned_to_xgrammar_without_fallback(tmp_path):
    """vLLM's "auto" falls back to guidance when xgrammar refuses a schema, and guidance expands
    repetition bounds (minItems 1e8) in the engine's API server: pinned, that schema is a 400."""
    import importlib.util

    command = engine_command(_settings(_model(tmp_path / "m", CHATML)))
    assert _value(command, "--structured-outputs-config.backend") == "xgrammar"
    assert importlib.util.find_spec("xgrammar") is not None, "the pinned backend is installed with the engine"
    embed = engine_command(_settings(_model(tmp_path / "e", CHATML), LORAFLEET_WORKER_TASK="embed"))
    assert "--structured-outputs-config.backend" not in embed  # the pooling runner decodes nothing


def test_the_pinned_backend_is_one_this_vllm_accepts():
    from typing import get_args

    from lorafleet.worker.engine import STRUCTURED_OUTPUTS_BACKEND
    from vllm.config.structured_outputs import StructuredOutputsBackend, StructuredOutputsConfig

    assert STRUCTURED_OUTPUTS_BACKEND in get_args(StructuredOutputsBackend)
    assert StructuredOutputsConfig(backend=STRUCTURED_OUTPUTS_BACKEND).backend == "xgrammar"
