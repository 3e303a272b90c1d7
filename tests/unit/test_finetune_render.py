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
