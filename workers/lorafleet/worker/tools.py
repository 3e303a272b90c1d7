"""Tool calling for the worker's base model: the parser that reads calls out of the model's text, and a
chat template that shows the model the tools.

``tool_choice`` "required" or a named function works with any model: vLLM constrains the output to
the tools' JSON schemas. "auto" needs a parser for the model family's call syntax
(``LORAFLEET_TOOL_CALL_PARSER``) and a chat template that renders ``tools``; a ChatML model whose own
template has no tools section (SmolLM2) gets the bundled Hermes-style one, which renders plain chats
exactly as SmolLM2's own.
"""

from __future__ import annotations

import json
from pathlib import Path

from lorafleet.core.settings import WorkerSettings

CHATML_TOOLS_TEMPLATE = Path(__file__).with_name("templates") / "chatml_tools.jinja"
_TEMPLATE_BYTES = 1 << 20  # a tokenizer config past this is not one we read for its template


def tool_arguments(settings: WorkerSettings) -> list[str]:
    """vLLM's tool-calling command-line arguments for this worker."""
    arguments: list[str] = []
    if settings.tool_call_parser:
        arguments += ["--enable-auto-tool-choice", "--tool-call-parser", settings.tool_call_parser,
                      "--tool-strict-level", settings.tool_strict_level]
    template = chat_template(settings)
    if template is not None:
        arguments += ["--chat-template", str(template)]
    return arguments


def chat_template(settings: WorkerSettings) -> Path | None:
    """The template to serve with: the configured one, else the bundled tools template for a ChatML
    model whose own has no tools section, else None (the model's own)."""
    if settings.chat_template:
        return Path(settings.chat_template).resolve()
    own = model_template(settings.resolved_model_path)
    if own is None or "tools" in own:
        return None
    return CHATML_TOOLS_TEMPLATE if "<|im_start|>" in own else None


def model_template(model_path: Path) -> str | None:
    """The model's own chat template (``chat_template.jinja``, or ``tokenizer_config.json``'s), if any."""
    standalone = model_path / "chat_template.jinja"
    try:
        if standalone.is_file() and standalone.stat().st_size <= _TEMPLATE_BYTES:
            return standalone.read_text()
        config_file = model_path / "tokenizer_config.json"
        if not config_file.is_file() or config_file.stat().st_size > _TEMPLATE_BYTES:
            return None
        template = json.loads(config_file.read_text()).get("chat_template")
    except (OSError, ValueError):
        return None
    if isinstance(template, list):  # named templates: the default one
        template = next((entry.get("template") for entry in template
                         if isinstance(entry, dict) and entry.get("name") == "default"), None)
    return template if isinstance(template, str) else None
