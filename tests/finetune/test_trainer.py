"""The trainer on a tiny random Llama: resume without retraining a step, cancel, events, token count,
and an adapter the platform's own upload validation accepts."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest
from lorafleet.adapters.architecture import model_architecture
from lorafleet.adapters.validation import BaseModelSpec, validate_files
from lorafleet.finetune import Hyperparameters
from lorafleet.trainer import CONTEXT, JobSpec, Renderer, load_examples, run_in_child, train
from safetensors.torch import load_file

from tests.finetune.data import qa_rows, write_jsonl

HP = Hyperparameters(n_epochs=1, batch_size=2, learning_rate_multiplier=5, lora_r=4, lora_alpha=8, lora_dropout=0.1)


class Crash(Exception):
    pass


def spec(tiny_model: Path, data: Path, output: Path, **changes) -> JobSpec:
    fields = {"hyperparameters": HP, "seed": 7, "checkpoint_every": 3, "threads": 1} | changes
    return JobSpec(str(tiny_model), str(data), str(output), **fields)


def metrics(events: list[dict]) -> list[dict]:
    return [event["data"] for event in events if event["type"] == "metrics"]


def test_resume_after_a_crash_trains_no_step_twice_and_ends_identical(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "train.jsonl", qa_rows(12))  # 6 steps of 2
    straight: list[dict] = []
    whole = train(spec(tiny_model, data, tmp_path / "a"), straight.append)

    first: list[dict] = []

    def crash_at_step_5(event: dict) -> None:
        first.append(event)
        if event["type"] == "metrics" and event["data"]["step"] == 5:
            raise Crash  # after the checkpoint at step 3, before the one at 6
    with pytest.raises(Crash):
        train(spec(tiny_model, data, tmp_path / "b"), crash_at_step_5)
    second: list[dict] = []
    resumed = train(spec(tiny_model, data, tmp_path / "b"), second.append)

    assert [m["step"] for m in metrics(second)] == [4, 5, 6]
    assert resumed.resumed_from_step == 3 and whole.resumed_from_step == 0
    losses = [m["train_loss"] for m in metrics(straight)]
    assert len(set(losses)) == 6
    assert [m["train_loss"] for m in metrics(first)[:3] + metrics(second)] == losses
    assert resumed.trained_tokens == whole.trained_tokens
    a = load_file(Path(whole.adapter_dir) / "adapter_model.safetensors")
    b = load_file(Path(resumed.adapter_dir) / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(a[name].equal(b[name]) for name in a)
    initial = load_file(tmp_path / "a" / "checkpoints" / "step-000003" / "adapter_model.safetensors")
    assert not all(initial[name].equal(a[name]) for name in a)  # training moved the weights


def test_trained_tokens_are_every_token_times_epochs_and_validation_is_reported(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "train.jsonl", qa_rows(10))
    valid = write_jsonl(tmp_path / "valid.jsonl", qa_rows(13)[10:])
    events: list[dict] = []
    hp = Hyperparameters(n_epochs=2, batch_size=4, learning_rate_multiplier=1, lora_r=4, lora_alpha=8)
    result = train(spec(tiny_model, data, tmp_path / "out", hyperparameters=hp, validation_file=str(valid),
                        checkpoint_every=0), events.append)
    tokens = sum(len(e.input_ids) for e in load_examples(data, Renderer.for_model(tiny_model)))
    assert result.trained_tokens == 2 * tokens
    assert (result.status, result.steps_completed, result.total_steps) == ("succeeded", 6, 6)
    reported = metrics(events)
    assert [m["step"] for m in reported if "valid_loss" in m] == [3, 6]  # each epoch's end
    assert all(m["valid_loss"] > 0 for m in reported if "valid_loss" in m)
    assert all(0 <= m["train_mean_token_accuracy"] <= 1 and m["tokens_per_second"] > 0 for m in reported)
    assert reported[-1]["eta_seconds"] == 0 and reported[-1]["trained_tokens"] == result.trained_tokens
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
    assert result.hyperparameters["n_epochs"] == 2 and result.hyperparameters["learning_rate"] == 2e-4


def test_the_adapter_passes_the_platforms_upload_validation(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "train.jsonl", qa_rows(10))
    hp = Hyperparameters(n_epochs=1, batch_size=10, lora_r=8, lora_alpha=16, target_modules=("q_proj", "v_proj", "down_proj"))
    result = train(spec(tiny_model, data, tmp_path / "out", hyperparameters=hp))
    base = BaseModelSpec(tiny_model.name, model_architecture(tiny_model), max_lora_rank=16)
    for folder in (Path(result.adapter_dir), tmp_path / "out" / "checkpoints" / "step-000001"):
        files = {p.name: p for p in folder.iterdir() if p.name != "trainer_state.pt"}
        valid = validate_files(files, base)
        assert (valid.rank, valid.lora_alpha, sorted(valid.target_modules)) == (8, 16.0, ["down_proj", "q_proj", "v_proj"])


def _drain(events, process) -> list[dict]:
    seen = []
    while True:
        try:
            event = events.get(timeout=120)
        except queue.Empty:
            raise AssertionError(f"no event from the child (alive: {process.is_alive()})") from None
        seen.append(event)
        if event["type"] in ("result", "error"):
            process.join(30)
            return seen


def test_cancel_in_the_child_stops_before_the_next_step(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "train.jsonl", qa_rows(40))
    events, cancel = CONTEXT.Queue(), CONTEXT.Event()
    hp = Hyperparameters(n_epochs=3, batch_size=1, lora_r=4, lora_alpha=8)
    process = run_in_child(spec(tiny_model, data, tmp_path / "out", hyperparameters=hp, checkpoint_every=0),
                           events, cancel)
    seen = []
    while True:
        event = events.get(timeout=120)
        seen.append(event)
        if event["type"] == "metrics":
            cancel.set()
            break
    seen += _drain(events, process)
    result = seen[-1]
    assert result["type"] == "result", result
    assert result["data"]["status"] == "cancelled" and result["data"]["adapter_dir"] is None
    steps = [e["data"]["step"] for e in seen if e["type"] == "metrics"]
    assert steps == list(range(1, result["data"]["steps_completed"] + 1))
    assert result["data"]["steps_completed"] <= 2 < result["data"]["total_steps"]  # the one running finishes
    assert process.exitcode == 0
    assert not (tmp_path / "out" / "adapter").exists()


def test_a_bad_file_in_the_child_is_an_error_naming_the_line(tmp_path, tiny_model):
    rows = qa_rows(12)
    rows[4]["messages"][1]["role"] = "wizard"
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    events, cancel = CONTEXT.Queue(), CONTEXT.Event()
    process = run_in_child(spec(tiny_model, data, tmp_path / "out"), events, cancel)
    seen = _drain(events, process)
    assert seen[-1] == {"type": "error", "error": {
        "code": "invalid_file_format", "param": "training_file",
        "message": "line 5: role 'wizard' is not one of system, user, assistant, tool"}}


def test_a_batch_split_into_micro_batches_by_tokens_trains_the_same_step(tmp_path, tiny_model):
    """Issue 28, finding 2: memory follows tokens per pass, not the batch size. A batch of 4 run as micro-batches
    of one example each (tokens_per_step below any example) takes the same optimizer steps as the batch run in
    one pass: the same losses, token counts and adapter (up to float summation order)."""
    import torch

    data = write_jsonl(tmp_path / "train.jsonl", qa_rows(12))
    hp = Hyperparameters(n_epochs=1, batch_size=4, learning_rate_multiplier=5, lora_r=4, lora_alpha=8)
    whole: list[dict] = []
    one = train(spec(tiny_model, data, tmp_path / "a", hyperparameters=hp, tokens_per_step=100_000), whole.append)
    split: list[dict] = []
    other = train(spec(tiny_model, data, tmp_path / "b", hyperparameters=hp, tokens_per_step=16), split.append)
    assert one.trained_tokens == other.trained_tokens and one.steps_completed == other.steps_completed == 3
    assert [m["train_loss"] for m in metrics(split)] == pytest.approx([m["train_loss"] for m in metrics(whole)], rel=1e-4)
    a = load_file(Path(one.adapter_dir) / "adapter_model.safetensors")
    b = load_file(Path(other.adapter_dir) / "adapter_model.safetensors")
    assert all(torch.allclose(a[name], b[name], atol=1e-5) for name in a)
