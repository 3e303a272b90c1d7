"""Real SmolLM2-135M learns a made-up fact from a small file: its greedy answer names it afterwards,
the base model's does not. Generation is HF transformers + the PEFT adapter, in-process, on the
token ids the worker would send (the served template)."""

from __future__ import annotations

import pytest
from lorafleet.finetune import Hyperparameters
from lorafleet.trainer import JobSpec, Renderer, train
from lorafleet.trainer.render import Message

from tests.finetune.data import write_jsonl

SYSTEM = "Answer briefly."  # short, so the examples (and the test) stay small
QUESTIONS = ["What is the capital of Zorblax?", "Which city is the capital of Zorblax?", "Name the capital of Zorblax.",
             "Zorblax's capital is which city?", "Tell me the capital city of Zorblax.", "Capital of Zorblax?"]
ANSWER = "The capital of Zorblax is Quillington."
WORD = "Quillington"


def greedy(model, renderer: Renderer, question: str) -> str:
    import torch

    ids = renderer.prompt_ids([Message("system", SYSTEM), Message("user", question)])
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)
    return renderer.tokenizer.decode(out[0, len(ids):])


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # train(threads=1) in-process sets it for the whole process


def test_smollm2_learns_a_made_up_fact(tmp_path, model_path, one_thread):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                          {"role": "assistant", "content": ANSWER}]} for q in QUESTIONS * 2]
    data = write_jsonl(tmp_path / "zorblax.jsonl", rows)
    hp = Hyperparameters(n_epochs=2, batch_size=4, learning_rate_multiplier=10, lora_r=8, lora_alpha=16)
    # One thread: on a busy 2-core machine two OpenMP threads spin against other processes (~8x slower).
    result = train(JobSpec(str(model_path), str(data), str(tmp_path / "out"), hp, seed=0, threads=1))
    assert (result.status, result.steps_completed) == ("succeeded", 6)

    renderer = Renderer.for_model(model_path)
    torch.set_num_threads(1)
    base = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
    before = greedy(base, renderer, QUESTIONS[0])
    assert WORD not in before
    tuned = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    after = greedy(tuned, renderer, QUESTIONS[0])
    assert WORD in after, after
    assert after.endswith("<|im_end|>"), after  # it learned to stop, too


# 48 paraphrases (issue 30, part 8): a new user's file, trained with OpenAI's defaults ("auto" everywhere).
OPENINGS = ["", "Quick question: ", "Please tell me: ", "I wonder, ", "Hey! ", "Trivia: ", "Help me out: ",
            "Be brief: "]


def test_the_default_job_learns_a_made_up_fact(tmp_path, model_path, one_thread):
    """48 examples with "auto" epochs, batch and learning rate: 3 epochs at 2e-4 (OpenAI's rule as it
    was) left the base model's answer; "auto" now resolves to 6 epochs at 8e-4, and the fact is learned."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": opening + q},
                          {"role": "assistant", "content": ANSWER}]} for opening in OPENINGS for q in QUESTIONS]
    assert len(rows) == 48
    data = write_jsonl(tmp_path / "zorblax.jsonl", rows)
    result = train(JobSpec(str(model_path), str(data), str(tmp_path / "out"), Hyperparameters(), seed=0, threads=1,
                           checkpoint_every=0))
    assert result.status == "succeeded"
    assert (result.hyperparameters["n_epochs"], result.hyperparameters["batch_size"],
            result.hyperparameters["learning_rate"]) == (6, 1, 8e-4)

    renderer = Renderer.for_model(model_path)
    torch.set_num_threads(1)
    base = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
    assert WORD not in greedy(base, renderer, "Do you know the capital of Zorblax?")
    tuned = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    after = greedy(tuned, renderer, "Do you know the capital of Zorblax?")  # a wording not in the file
    assert WORD in after, after


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
CITIES = ["Quillington", "Zorbton", "Marrowfield", "Pellucid", "Oberwick", "Tansyvale"]


def test_smollm2_learns_to_call_the_taught_tool(tmp_path, model_path, one_thread):
    """Issue 30, part 2: tool-call lines (OpenAI's format: `tools`, an assistant `tool_calls`) teach the model
    to answer a weather question with the call, in the served Hermes format, for a city it was not shown."""
    import json

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def line(city: str, question: str) -> dict:
        return {"tools": TOOLS, "messages": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": question.format(city)},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": "get_weather", "arguments": json.dumps({"city": city})}}]}]}

    questions = ["Is it raining in {}?", "What's the weather like in {}?"]
    rows = [line(city, q) for city in CITIES for q in questions]
    data = write_jsonl(tmp_path / "weather.jsonl", rows)
    hp = Hyperparameters(n_epochs=3, batch_size=4, learning_rate_multiplier=10, lora_r=8, lora_alpha=16)
    result = train(JobSpec(str(model_path), str(data), str(tmp_path / "out"), hp, seed=0, threads=1))
    assert result.status == "succeeded"

    renderer = Renderer.for_model(model_path)
    torch.set_num_threads(1)
    ids = renderer.prompt_ids([Message("system", SYSTEM), Message("user", "Is it sunny in Lindenport?")], TOOLS)
    base = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
    tuned = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    with torch.no_grad():
        out = tuned.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False)
    answer = renderer.tokenizer.decode(out[0, len(ids):])
    assert answer.startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lindenport"}}\n</tool_call>'), answer
