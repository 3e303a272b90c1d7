"""Training-file validation with SmolLM2's real tokenizer and served template: every refusal names its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lorafleet.trainer.dataset import Limits, TrainingFileInvalid, load_examples, validate_file
from lorafleet.trainer.render import Renderer


@pytest.fixture(scope="module")
def renderer(model_path: Path) -> Renderer:
    return Renderer.for_model(model_path)


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}


def write(path: Path, rows: list, raw: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(row) for row in rows]
    for number, text in (raw or {}).items():
        lines[number - 1] = text
    path.write_text("".join(line + "\n" for line in lines))
    return path


def refused(path: Path, renderer: Renderer, limits: Limits = Limits()) -> TrainingFileInvalid:
    with pytest.raises(TrainingFileInvalid) as caught:
        validate_file(path, renderer, limits)
    assert caught.value.param == "training_file"
    return caught.value


def test_a_good_file_is_counted_with_the_real_tokenizer(tmp_path, renderer):
    rows = [chat(i) for i in range(11)] + [{"prompt": "Capital of Zorblax:", "completion": " Quillington"}]
    summary = validate_file(write(tmp_path / "a.jsonl", rows), renderer)
    examples = load_examples(tmp_path / "a.jsonl", renderer)
    assert summary.n_examples == 12 == len(examples)
    assert summary.total_tokens == sum(len(e.input_ids) for e in examples)
    assert summary.longest_example_tokens == max(len(e.input_ids) for e in examples)
    assert 0 < summary.trained_positions < summary.total_tokens


def test_unknown_role_names_its_line(tmp_path, renderer):
    rows = [chat(i) for i in range(70)]
    rows[60]["messages"][0]["role"] = "wizard"
    error = refused(write(tmp_path / "a.jsonl", rows), renderer)
    assert error.message == "line 61: role 'wizard' is not one of system, user, assistant, tool"
    assert (error.line, error.code, error.status_code) == (61, "invalid_file_format", 400)
    assert error.envelope()["error"]["param"] == "training_file"


@pytest.mark.parametrize(("line", "mutate", "message"), [
    (3, lambda row: "{not json", "not valid JSON"),
    (4, lambda row: [1, 2], "expected a JSON object"),
    (5, lambda row: {"messages": [{"role": "user", "content": "hi"}]}, "no assistant message"),
    (6, lambda row: {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}]},
     "messages[1].tool_call_id must name a call of an earlier assistant message"),
    (6, lambda row: {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
     "messages[1].tool_calls[0].function.arguments must be a string holding a JSON object"),
    (6, lambda row: {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages[1].tool_calls[0].id must be"),
    (6, lambda row: {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]},
     "messages[1].content must be a string (or null beside tool_calls)"),
    (6, lambda row: {**row, "tools": [{"type": "function", "function": {}}]}, "tools[0].function.name must be"),
    (7, lambda row: {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                                  {"role": "assistant", "content": "a"}]}, "messages[0].content must be a string"),
    (8, lambda row: {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]},
     "messages[1].weight must be 0 or 1"),
    (9, lambda row: {"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]},
     "only allowed on assistant messages"),
    (10, lambda row: {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
     "every assistant message has weight 0"),
    (11, lambda row: {"messages": []}, "must be a non-empty list"),
    (12, lambda row: {"prompt": "p"}, "expected `messages`, or `prompt` and `completion`"),
    (2, lambda row: {**row, "functions": []}, "unsupported key 'functions' (deprecated by OpenAI): use `tools`"),
    (3, lambda row: {"messages": [{"role": "assistant", "content": "a"}]}, "starts with an assistant message"),
    (4, lambda row: {"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]},
     "messages[0].role is missing"),
    (5, lambda row: {"messages": [{"role": "user", "content": "q", "name": "x"}, {"role": "assistant", "content": "a"}]},
     "unexpected key 'name'"),
])
def test_each_malformed_line_is_refused_by_number(tmp_path, renderer, line, mutate, message):
    rows: list = [chat(i) for i in range(15)]
    raw = {}
    bad = mutate(rows[line - 1])
    if isinstance(bad, str):
        raw[line] = bad
    else:
        rows[line - 1] = bad
    error = refused(write(tmp_path / "a.jsonl", rows, raw), renderer)
    assert error.line == line
    assert error.message.startswith(f"line {line}: ") and message in error.message, error.message


def test_too_few_examples_and_an_empty_file(tmp_path, renderer):
    error = refused(write(tmp_path / "few.jsonl", [chat(i) for i in range(9)]), renderer)
    assert (error.code, error.line) == ("invalid_n_examples", None)
    assert "9 examples; at least 10" in error.message
    (tmp_path / "empty.jsonl").write_text("")
    assert refused(tmp_path / "empty.jsonl", renderer).code == "invalid_n_examples"
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    assert "empty" in refused(tmp_path / "blank.jsonl", renderer).message
    assert validate_file(tmp_path / "few.jsonl", renderer, Limits(min_examples=9)).n_examples == 9


def test_token_limits_per_example_and_per_file(tmp_path, renderer):
    rows = [chat(i) for i in range(12)]
    rows[7]["messages"][1]["content"] = "word " * 200
    path = write(tmp_path / "a.jsonl", rows)
    length = len(load_examples(path, renderer, Limits(min_examples=1))[7].input_ids)
    error = refused(path, renderer, Limits(max_example_tokens=length - 1))
    assert (error.code, error.line) == ("example_too_long", 8)
    assert f"{length} tokens; the limit is {length - 1}" in error.message
    assert validate_file(path, renderer, Limits(max_example_tokens=length)).longest_example_tokens == length
    total = validate_file(path, renderer).total_tokens
    assert refused(path, renderer, Limits(max_total_tokens=total - 1)).code == "too_many_tokens"
    assert validate_file(path, renderer, Limits(max_total_tokens=total)).total_tokens == total


def test_byte_budgets_per_line_and_per_file(tmp_path, renderer):
    rows = [chat(i) for i in range(12)]
    rows[4]["messages"][0]["content"] = "x" * 5000
    path = write(tmp_path / "a.jsonl", rows)
    error = refused(path, renderer, Limits(max_line_bytes=4096))
    assert (error.code, error.line) == ("line_too_long", 5)
    size = path.stat().st_size
    assert refused(path, renderer, Limits(max_file_bytes=size - 1)).code == "file_too_large"
    assert validate_file(path, renderer, Limits(max_file_bytes=size)).n_examples == 12
    (tmp_path / "b.jsonl").write_bytes(b"\xff\xfe\n")
    assert refused(tmp_path / "b.jsonl", renderer).message == "line 1: not UTF-8 text"


def test_a_validation_file_names_its_own_param(tmp_path, renderer):
    with pytest.raises(TrainingFileInvalid) as caught:
        validate_file(write(tmp_path / "v.jsonl", [{"x": 1}]), renderer, param="validation_file")
    assert caught.value.param == "validation_file"


# ---- issue 28, finding 5: bounded, linear validation that refuses by line instead of crashing ----------

def test_a_lone_surrogate_and_deep_nesting_are_refused_by_line_not_crashes(tmp_path, renderer):
    rows: list = [chat(i) for i in range(12)]
    surrogate = '{"messages": [{"role": "user", "content": "hi \\ud800"}, {"role": "assistant", "content": "a"}]}'
    error = refused(write(tmp_path / "s.jsonl", rows, {3: surrogate}), renderer)
    assert error.line == 3 and "lone surrogate" in error.message, error.message
    completion = '{"prompt": "p", "completion": "\\udfff"}'
    assert refused(write(tmp_path / "c.jsonl", rows, {5: completion}), renderer).line == 5
    deep = "[" * 100_000 + "]" * 100_000
    error = refused(write(tmp_path / "d.jsonl", rows, {7: deep}), renderer)
    assert error.line == 7 and "nested" in error.message, error.message
    inside = {"messages": [{"role": "user", "content": "[" * 500 + "{"}, {"role": "assistant", "content": "}"}]}
    assert validate_file(write(tmp_path / "ok.jsonl", [inside] + rows[1:]), renderer).n_examples == 12  # brackets in text


def test_more_than_256_messages_in_one_example_are_refused_by_line(tmp_path, renderer):
    turns = [{"role": role, "content": "x"} for _ in range(129) for role in ("user", "assistant")]
    rows: list = [chat(i) for i in range(12)]
    rows[9] = {"messages": turns}  # 258 messages
    error = refused(write(tmp_path / "a.jsonl", rows), renderer, Limits(max_example_tokens=100_000))
    assert error.line == 10 and "258 messages; at most 256" in error.message
    rows[9] = {"messages": turns[:256]}
    assert validate_file(write(tmp_path / "b.jsonl", rows), renderer, Limits(max_example_tokens=100_000)).n_examples == 12


def test_a_long_conversation_stops_at_the_token_limit_instead_of_rendering_every_turn(tmp_path, renderer, monkeypatch):
    """4,000 turns held the validator 114 s: each assistant turn re-rendered its whole prefix, and the token
    limit was checked only after all of them. Now the limit is checked as the tokens are counted, so an
    example far past it costs a few prefix renders, not one per turn."""
    turns = [{"role": role, "content": "word " * 40} for _ in range(120) for role in ("user", "assistant")]
    rows: list = [chat(i) for i in range(12)]
    rows[1] = {"messages": turns}
    path = write(tmp_path / "a.jsonl", rows)
    calls = {"n": 0}
    original = Renderer._text

    def counted(self, messages, *, generation_prompt, tools=None):
        calls["n"] += 1
        return original(self, messages, generation_prompt=generation_prompt, tools=tools)

    monkeypatch.setattr(Renderer, "_text", counted)
    error = refused(path, renderer, Limits(max_example_tokens=300))
    assert (error.line, error.code) == (2, "example_too_long") and "the limit is 300" in error.message
    assert calls["n"] < 20, calls  # 2 renders per turn up to ~300 tokens, not 240 for the whole conversation


def test_validation_has_a_time_budget_and_names_the_line_it_reached(tmp_path, renderer, monkeypatch):
    import lorafleet.trainer.dataset as dataset

    clock = iter(range(0, 1000, 10))  # every look at the clock: 10 s later
    monkeypatch.setattr(dataset.time, "monotonic", lambda: next(clock))
    error = refused(write(tmp_path / "a.jsonl", [chat(i) for i in range(12)]), renderer, Limits(max_seconds=25))
    assert (error.code, error.line) == ("validation_timeout", 3), error.message
    assert "more than 25 seconds" in error.message
