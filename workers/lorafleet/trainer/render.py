"""One training example → (input_ids, labels), rendered exactly as the workers serve the base model.

The chat template is the one the worker passes to vLLM (``lorafleet.worker.tools.chat_template``:
the configured file, else the bundled ChatML-with-tools template for SmolLM2, else the model's own),
and the tokenizer is the model folder's own, so training sees the token ids serving will see.

The loss mask is built without ``{% generation %}`` markers (SmolLM2's template has none): the
conversation is rendered prefix by prefix, and for every assistant message the text between
"everything before it, with the generation prompt" and "everything up to and including it" is the
part the model generates when served: its content and the end-of-turn token (``<|im_end|>``), which
stays in the loss, or the model never learns to stop. What the template adds after the end-of-turn
token (ChatML's newline) is the next prompt's, not the model's, and is not trained.

Each piece of text is tokenized on its own and the ids concatenated, so the ids of "everything
before assistant turn k" are exactly the prompt ids vLLM computes for that conversation prefix
(a unit test compares them with vLLM's own renderer), and each trained turn's ids are exactly what
the model generates after that prompt. One boundary can differ from vLLM's later re-tokenization:
an assistant message whose content starts with whitespace is tokenized as generated after the
header's newline, while vLLM, rendering a later turn's prompt, tokenizes that newline and the
whitespace together.

``prompt``/``completion`` examples are served by ``/v1/completions``, which applies no template:
they are trained as raw text, the completion followed by the end-of-sequence token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100  # PyTorch cross-entropy's ignore_index


class TemplateMismatch(ValueError):
    """The template does not render a conversation as a growing prefix: no exact mask can be built."""


class TooLong(ValueError):
    """Rendering stopped as soon as the example passed its token limit (``tokens`` counted so far)."""

    def __init__(self, tokens: int, where: str) -> None:
        super().__init__(f"over {tokens} tokens by {where}")
        self.tokens = tokens
        self.where = where


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object's text, as OpenAI's files and requests carry it


@dataclass(frozen=True)
class Message:
    role: str
    content: str | None
    weight: int = 1  # only meaningful on assistant messages: 0 = not trained
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's calls
    tool_call_id: str | None = None  # a tool message's answer to

    def as_dict(self) -> dict[str, Any]:
        """The message as vLLM hands it to the chat template: a call's arguments decoded to an object
        (vllm/renderers/chat_utils.py ``_postprocess_messages``), so ``tojson`` writes them as served."""
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [{"id": call.id, "type": "function",
                                   "function": {"name": call.name, "arguments": json.loads(call.arguments)}}
                                  for call in self.tool_calls]
        if self.tool_call_id is not None:
            data["tool_call_id"] = self.tool_call_id
        return data


@dataclass(frozen=True)
class ChatExample:
    messages: tuple[Message, ...]
    tools: tuple[dict[str, Any], ...] = ()  # OpenAI's `tools` of the line: rendered as a request's are


@dataclass(frozen=True)
class CompletionExample:
    prompt: str
    completion: str


Example = ChatExample | CompletionExample


@dataclass(frozen=True)
class Rendered:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken

    @property
    def trained_positions(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def served_chat_template(model_path: Path, configured: str = "") -> str | None:
    """The text of the chat template a worker serving ``model_path`` passes to vLLM (None: the
    tokenizer's own). Asks the worker's own code, so the two cannot drift apart."""
    from lorafleet.core.settings import WorkerSettings
    from lorafleet.worker.tools import chat_template

    path = chat_template(WorkerSettings(model_path=str(model_path), chat_template=configured))
    return path.read_text() if path is not None else None


class Renderer:
    """Renders examples with one model's tokenizer and served chat template."""

    def __init__(self, tokenizer: Any, chat_template: str | None) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no end-of-sequence token")
        self.eos_token_id: int = eos

    @classmethod
    def for_model(cls, model_path: Path, configured_template: str = "") -> Renderer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        return cls(tokenizer, served_chat_template(model_path, configured_template))

    def render(self, example: Example, *, train_on_inputs: bool = False, max_tokens: int | None = None) -> Rendered:
        """``max_tokens``: stop with :class:`TooLong` as soon as the tokens counted so far pass it, before
        rendering the next turn's prefix (the per-turn renders are what grows with the conversation)."""
        if isinstance(example, CompletionExample):
            rendered = self._render_completion(example)
        else:
            rendered = self._render_chat(example.messages, max_tokens, list(example.tools) or None)
        if train_on_inputs:
            return Rendered(rendered.input_ids, list(rendered.input_ids))
        return rendered

    def prompt_ids(self, messages: tuple[Message, ...] | list[Message],
                   tools: list[dict[str, Any]] | None = None) -> list[int]:
        """What the worker sends the model for a conversation before the next assistant turn."""
        return self._encode(self._text(list(messages), generation_prompt=True, tools=tools))

    def _render_completion(self, example: CompletionExample) -> Rendered:
        # /v1/completions tokenizes the prompt with the tokenizer's special tokens, then generates.
        prompt = self.tokenizer(example.prompt, add_special_tokens=True)["input_ids"]
        completion = self._encode(example.completion) + [self.eos_token_id]
        return Rendered(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion)

    def _render_chat(self, messages: tuple[Message, ...], max_tokens: int | None = None,
                     tools: list[dict[str, Any]] | None = None) -> Rendered:
        full = self._text(list(messages), generation_prompt=False, tools=tools)
        input_ids: list[int] = []
        labels: list[int] = []
        done = 0  # characters of `full` already tokenized
        last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
        for index, message in enumerate(messages):
            if message.role != "assistant":
                continue
            # Tokens are counted as we go: every piece is tokenized once, and a conversation already past
            # the limit stops here instead of rendering one more prefix per remaining turn (issue 28,
            # finding 5). The last turn is let through so a refusal can give the example's exact count.
            if max_tokens is not None and len(input_ids) > max_tokens and index < last:
                raise TooLong(len(input_ids), f"messages[{index}]")
            before = self._text(list(messages[:index]), generation_prompt=True, tools=tools)
            through = self._text(list(messages[: index + 1]), generation_prompt=False, tools=tools)
            if not (full.startswith(through) and through.startswith(before) and len(before) >= done):
                raise TemplateMismatch("the chat template does not render this conversation as a growing prefix")
            context = self._encode(full[done:len(before)])
            turn = self._encode(through[len(before):])
            input_ids += context + turn
            labels += [IGNORE_INDEX] * len(context) + (self._turn_labels(turn) if message.weight else
                                                        [IGNORE_INDEX] * len(turn))
            done = len(through)
        tail = self._encode(full[done:])
        return Rendered(input_ids + tail, labels + [IGNORE_INDEX] * len(tail))

    def _turn_labels(self, turn: list[int]) -> list[int]:
        # Up to and including the last end-of-turn token: what the model generates before it stops.
        if self.eos_token_id not in turn:
            return list(turn)
        last = len(turn) - 1 - turn[::-1].index(self.eos_token_id)
        return turn[: last + 1] + [IGNORE_INDEX] * (len(turn) - last - 1)

    def _text(self, messages: list[Message], *, generation_prompt: bool,
              tools: list[dict[str, Any]] | None = None) -> str:
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(
            [m.as_dict() for m in messages], chat_template=self.chat_template, tools=tools,
            tokenize=False, add_generation_prompt=generation_prompt,
        )

    def _encode(self, text: str) -> list[int]:
        # The template writes any special tokens itself (vLLM tokenizes its output the same way).
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
