"""The trainer's token ids are what the served model receives; the loss mask keeps the end-of-turn token."""

from __future__ import annotations

from pathlib import Path

import pytest
from lorafleet.core.settings import WorkerSettings
from lorafleet.trainer.render import IGNORE_INDEX, ChatExample, CompletionExample, Message, Renderer
from lorafleet.worker.engine import engine_command
from lorafleet.worker.tools import CHATML_TOOLS_TEMPLATE

CONVERSATION = (
    Message("system", "You answer in one sentence."),
    Message("user", "What is the capital of Zorblax?"),
    Message("assistant", "The capital of Zorblax is Quillington."),
    Message("user", "And its river?\n  Be precise."),
    Message("assistant", "The Quill, which runs\nthrough it.", weight=0),
    Message("user", "Thanks!"),
    Message("assistant", "  You're welcome 😊"),  # leading spaces: generated after the header's newline
)


@pytest.fixture(scope="module")
def renderer(model_path: Path) -> Renderer:
    return Renderer.for_model(model_path)


def labelled_runs(labels: list[int]) -> list[list[int]]:
    runs, current = [], []
    for label in labels + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs


def test_the_trainer_uses_the_template_the_worker_passes_to_vllm(model_path, renderer):
    command = engine_command(WorkerSettings(model_path=str(model_path)))
    served = Path(command[command.index("--chat-template") + 1])
    assert served == CHATML_TOOLS_TEMPLATE  # SmolLM2's own template has no tools section
    assert renderer.chat_template == served.read_text()


def test_token_ids_equal_what_vllm_renders_for_each_assistant_turn(model_path, renderer):
    from vllm.renderers.chat_utils import load_chat_template
    from vllm.renderers.hf import safe_apply_chat_template
    from vllm.tokenizers import get_tokenizer

    command = engine_command(WorkerSettings(model_path=str(model_path)))
    template = load_chat_template(command[command.index("--chat-template") + 1])
    tokenizer = get_tokenizer(str(model_path))
    rendered = renderer.render(ChatExample(CONVERSATION))
    turns = [i for i, m in enumerate(CONVERSATION) if m.role == "assistant"]
    for index in turns:
        conversation = [{"role": m.role, "content": m.content} for m in CONVERSATION[:index]]
        prompt = safe_apply_chat_template(None, tokenizer, conversation, chat_template=template,
                                          add_generation_prompt=True, tokenize=True)
        assert rendered.input_ids[: len(prompt)] == prompt
        generated = tokenizer.encode(CONVERSATION[index].content, add_special_tokens=False) + [tokenizer.eos_token_id]
        assert rendered.input_ids[len(prompt): len(prompt) + len(generated)] == generated
        expected = generated if CONVERSATION[index].weight else [IGNORE_INDEX] * len(generated)
        assert rendered.labels[len(prompt): len(prompt) + len(generated)] == expected
    # Without a turn that starts with whitespace, the whole conversation is vLLM's rendering of it too.
    plain = CONVERSATION[:-1] + (Message("assistant", "You're welcome 😊"),)
    whole = safe_apply_chat_template(None, tokenizer, [{"role": m.role, "content": m.content} for m in plain],
                                     chat_template=template, tokenize=True)
    assert renderer.render(ChatExample(plain)).input_ids == whole


def test_only_weighted_assistant_turns_and_their_end_of_turn_token_are_trained(renderer):
    rendered = renderer.render(ChatExample(CONVERSATION))
    tokenizer = renderer.tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert renderer.eos_token_id == eos == tokenizer.pad_token_id  # pad = EOS: the mask must not go by id
    runs = labelled_runs(rendered.labels)
    assert [tokenizer.decode(run) for run in runs] == [
        "The capital of Zorblax is Quillington.<|im_end|>", "  You're welcome 😊<|im_end|>"]
    # The newline after <|im_end|> is the next prompt's, and every other <|im_end|> is masked.
    assert rendered.input_ids.count(eos) == 7 and sum(1 for label in rendered.labels if label == eos) == 2
    assert rendered.input_ids[-1] != eos and rendered.labels[-1] == IGNORE_INDEX


def test_train_on_inputs_trains_every_token(renderer):
    rendered = renderer.render(ChatExample(CONVERSATION), train_on_inputs=True)
    assert rendered.labels == rendered.input_ids


def test_prompt_completion_is_raw_text_ending_with_eos(renderer):
    rendered = renderer.render(CompletionExample("Capital of Zorblax:", " Quillington"))
    prompt = renderer.tokenizer("Capital of Zorblax:")["input_ids"]
    assert rendered.input_ids[: len(prompt)] == prompt
    assert labelled_runs(rendered.labels) == [renderer.tokenizer.encode(" Quillington", add_special_tokens=False)
                                              + [renderer.eos_token_id]]


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


def test_tool_calls_render_as_vllm_serves_them(model_path, renderer, tmp_path):
    """Issue 30, part 2: a line with `tools`, an assistant `tool_calls` and a `tool` answer is trained on the
    token ids the worker sends (vLLM's renderer with the served template and the request's `tools`, the
    call's `arguments` decoded to an object as vLLM does), and the call itself is trained."""
    import json

    from lorafleet.trainer.dataset import parse_example
    from vllm.renderers.chat_utils import load_chat_template
    from vllm.renderers.hf import safe_apply_chat_template
    from vllm.tokenizers import get_tokenizer

    line = {"tools": TOOLS, "parallel_tool_calls": False, "messages": [
        {"role": "system", "content": "You check the weather."},
        {"role": "user", "content": "Is it raining in Quillington?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": "{\"city\":\"Quillington\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"rain\": true}"},
        {"role": "assistant", "content": "Yes, it is raining in Quillington."}]}
    example = parse_example(json.dumps(line), 1)
    rendered = renderer.render(example)
    command = engine_command(WorkerSettings(model_path=str(model_path)))
    template = load_chat_template(command[command.index("--chat-template") + 1])
    tokenizer = get_tokenizer(str(model_path))
    served = [dict(m) for m in line["messages"]]
    served[2] = {**served[2], "tool_calls": [{**served[2]["tool_calls"][0], "function": {
        "name": "get_weather", "arguments": {"city": "Quillington"}}}]}  # what vLLM's parser hands the template
    for index in (2, 4):
        prompt = safe_apply_chat_template(None, tokenizer, served[:index], tools=TOOLS, chat_template=template,
                                          add_generation_prompt=True, tokenize=True)
        assert rendered.input_ids[: len(prompt)] == prompt
        assert renderer.prompt_ids(example.messages[:index], TOOLS) == prompt
    whole = safe_apply_chat_template(None, tokenizer, served, tools=TOOLS, chat_template=template, tokenize=True)
    assert rendered.input_ids == whole
    trained = tokenizer.decode([t for t in rendered.labels if t != IGNORE_INDEX])
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Quillington"}}\n</tool_call><|im_end|>' in trained
    assert "Yes, it is raining in Quillington.<|im_end|>" in trained and "rain\": true" not in trained
