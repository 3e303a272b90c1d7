"""Peak memory of the training child per tokens per step (issue 28, finding 2).

One ~2,000-token example (under the 2,048 limit) took the trainer child to 6.6 GB at batch size 1,
13.6 GB at 2, and the kernel's global OOM killer at 4. Training now runs a batch as micro-batches of at
most ``LORAFLEET_TRAINER_TOKENS_PER_STEP`` tokens, with gradient checkpointing and a chunked loss, so the
peak should follow tokens per step and not the batch size. This trains SmolLM2-135M-Instruct (fp32, CPU)
for a few steps on ~1,550-token examples in a spawned child per setting and reports the child's peak
resident memory (``ru_maxrss``) and seconds per step.

    PYTHONPATH=platform .venv/bin/python benchmarks/trainer_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from lorafleet.devtools.bench import publish
from lorafleet.finetune.hyperparameters import Hyperparameters
from lorafleet.models.prepare import prepare_smollm2
from lorafleet.trainer.dataset import Limits
from lorafleet.trainer.training import JobSpec, train

MODEL_CACHE = Path(os.environ.get("LORAFLEET_TEST_MODEL_CACHE", Path.home() / ".cache" / "lorafleet" / "models"))  # the tests' cache


def _commit() -> str:
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=root).stdout.strip()
    return f"{head}{' (with uncommitted changes)' if dirty else ''}"


def _data(folder: Path, examples: int) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Story {i}: " + "the cat sat on the mat and " * 200},
                          {"role": "assistant", "content": "It did. " * 40}]} for i in range(examples)]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _run(spec: JobSpec, answer: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    started = time.monotonic()
    result = train(spec)
    answer.put({"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "seconds": time.monotonic() - started, "steps": result.steps_completed,
                "tokens": result.trained_tokens})


def measure(model: Path, data: Path, out: Path, batch_size: int, tokens_per_step: int) -> dict:
    context = multiprocessing.get_context("spawn")
    answer = context.Queue()
    spec = JobSpec(str(model), str(data), str(out), Hyperparameters(n_epochs=1, batch_size=batch_size, lora_r=8),
                   limits=Limits(min_examples=1), threads=1, tokens_per_step=tokens_per_step)
    process = context.Process(target=_run, args=(spec, answer))
    process.start()
    process.join()
    return answer.get(timeout=5) if process.exitcode == 0 else {"error": f"exit code {process.exitcode}"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="two settings only")
    args = parser.parse_args()
    model = prepare_smollm2(MODEL_CACHE / "SmolLM2-135M-Instruct")
    settings = [(1, 2048), (2, 2048)] if args.quick else [(1, 512), (1, 2048), (2, 2048), (4, 2048), (4, 4096)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size, tokens in settings:
            data = _data(Path(tmp), batch_size)  # one step of batch_size examples
            got = measure(model, data, Path(tmp) / f"out-{batch_size}-{tokens}", batch_size, tokens)
            rows.append((batch_size, tokens, got))
            print(batch_size, tokens, got, flush=True)
    lines = [f"| {b} | {t} | {g.get('tokens', '–')} | "
             + (f"{g['peak_bytes'] / 2**30:.2f} GiB | {g['seconds']:.1f} s |" if "peak_bytes" in g else f"{g['error']} | – |")
             for b, t, g in rows]
    report = f"""# Trainer memory per tokens per step (issue 28, finding 2)

`benchmarks/trainer_memory.py{' --quick' if args.quick else ''}` at commit `{_commit()}` on {platform.machine()},
SmolLM2-135M-Instruct, fp32 on CPU, one thread, LoRA r 8 on every projection. Each setting trains one step of
`batch size` examples of ~1,550 tokens (under the 2,048 limit) in a fresh spawned child; the peak is the
child's `ru_maxrss` (model load included), the time the whole child (load and step).

Before (issue 28, measured on this machine): 6.6 GB at batch size 1, 13.6 GB at 2, the global OOM killer at 4.

| batch size | tokens per step | tokens trained | peak child RSS | time |
|---|---|---|---|---|
{chr(10).join(lines)}
"""
    publish("trainer_memory", report)


if __name__ == "__main__":
    main()
