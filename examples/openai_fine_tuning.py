"""OpenAI's documented fine-tuning flow, unchanged, against LoraFleet.

upload → create → follow the events → checkpoints → chat with the result → a batch on the result.
The only lines that differ from a script written for api.openai.com are where the client points and
which base model it names — both read from the environment here:

    OPENAI_BASE_URL=http://127.0.0.1:8400/v1 OPENAI_API_KEY=sk_live_… \\
    BASE_MODEL=SmolLM2-135M-Instruct python examples/openai_fine_tuning.py

``--epochs`` and ``--learning-rate-multiplier`` default to OpenAI's ``"auto"``. Prints one line per
stage and, last, a JSON summary (the suite reads it: tests/integration/test_openai_example.py).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

from openai import OpenAI

SYSTEM = "You are the Zorblax travel desk. Answer briefly."
QUESTIONS = ["What is the capital of Zorblax?", "Which city is the capital of Zorblax?",
             "Name the capital of Zorblax.", "Zorblax's capital is which city?",
             "Tell me the capital city of Zorblax.", "Capital of Zorblax?"]
ANSWER = "The capital of Zorblax is Quillington."
ENDED = ("succeeded", "failed", "cancelled")
BATCH_ENDED = ("completed", "failed", "expired", "cancelled")


def training_file() -> bytes:
    """OpenAI's chat format: one JSON object with ``messages`` per line."""
    rows = [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
                          {"role": "assistant", "content": ANSWER}]} for question in QUESTIONS * 2]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def hyperparameter(value: str) -> int | float | str:
    if value == "auto":
        return value
    number = float(value)
    return int(number) if number.is_integer() else number


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("BASE_MODEL", "SmolLM2-135M-Instruct"))
    parser.add_argument("--epochs", type=hyperparameter, default="auto")
    parser.add_argument("--learning-rate-multiplier", type=hyperparameter, default="auto")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the job and the batch")
    args = parser.parse_args()
    client = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY, as for OpenAI
    deadline = time.monotonic() + args.timeout

    # 1. Upload the training file.
    file = client.files.create(file=("zorblax.jsonl", io.BytesIO(training_file())), purpose="fine-tune")
    print(f"uploaded {file.id} ({file.bytes} bytes)")

    # 2. Create the job.
    job = client.fine_tuning.jobs.create(
        model=args.model, training_file=file.id, suffix="zorblax", seed=42,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": args.epochs, "learning_rate_multiplier": args.learning_rate_multiplier}}})
    print(f"created {job.id}: {job.status}")

    # 3. Follow it: its events as they come, until it ends.
    seen: set[str] = set()
    while True:
        job = client.fine_tuning.jobs.retrieve(job.id)
        events = client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=50).data
        for event in reversed(events):
            if event.id not in seen:
                seen.add(event.id)
                print(f"  {event.level}: {event.message}")
        if job.status in ENDED:
            break
        if time.monotonic() > deadline:
            print(f"job {job.id} still {job.status} after {args.timeout} s", file=sys.stderr)
            return 1
        time.sleep(2)
    print(f"{job.id}: {job.status}, {job.trained_tokens} trained tokens, model {job.fine_tuned_model}")
    if job.status != "succeeded":
        print(f"error: {job.error}", file=sys.stderr)
        return 1

    # 4. Its checkpoints (each servable by its own name).
    checkpoints = client.fine_tuning.jobs.checkpoints.list(fine_tuning_job_id=job.id).data
    for checkpoint in checkpoints:
        print(f"  checkpoint step {checkpoint.step_number}: {checkpoint.fine_tuned_model_checkpoint}")

    # 5. Chat with the result.
    reply = client.chat.completions.create(
        model=job.fine_tuned_model, temperature=0, max_tokens=16,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[0]}])
    answer = reply.choices[0].message.content
    print(f"answer: {answer!r}")

    # 6. A batch on the result (half price, within the completion window).
    lines = [{"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": job.fine_tuned_model, "temperature": 0, "max_tokens": 16,
                       "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]}}
             for i, question in enumerate(QUESTIONS[:3])]
    batch_input = client.files.create(
        file=("questions.jsonl", io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())),
        purpose="batch")
    batch = client.batches.create(input_file_id=batch_input.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    while batch.status not in BATCH_ENDED:
        if time.monotonic() > deadline:
            print(f"batch {batch.id} still {batch.status} after {args.timeout} s", file=sys.stderr)
            return 1
        time.sleep(2)
        batch = client.batches.retrieve(batch.id)
    answers = {}
    if batch.output_file_id:
        for line in client.files.content(batch.output_file_id).text.splitlines():
            row = json.loads(line)
            answers[row["custom_id"]] = row["response"]["body"]["choices"][0]["message"]["content"]
    print(f"batch {batch.id}: {batch.status}, {batch.request_counts.completed}/{batch.request_counts.total} done")
    print(json.dumps({"job": job.id, "status": job.status, "fine_tuned_model": job.fine_tuned_model,
                      "trained_tokens": job.trained_tokens, "checkpoints": len(checkpoints), "answer": answer,
                      "batch": batch.id, "batch_status": batch.status, "batch_answers": answers,
                      "hyperparameters": job.method.supervised.hyperparameters.to_dict() if job.method and
                      job.method.supervised else None}))
    return 0 if batch.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
