"""Fine-tuning through the platform: time from `jobs.create` to the first token served by the result.

A platform of its own (embedded PostgreSQL, one vLLM worker, the gateway, `lorafleet trainer` with one
torch thread), driven by the official openai SDK exactly as a tenant would: upload 60 examples,
create a job for 3 epochs (batch size and learning rate "auto"), poll until it succeeds, then stream
one chat completion from `fine_tuned_model`. Reported: each phase's wall time (validation and queue,
training, registration) from the job's events, training tokens/s, and the total against the
issue's target (under 5 minutes on this machine).

    PYTHONPATH=platform:billing:workers:tests/support .venv/bin/python benchmarks/finetune_platform.py [--examples 60] [--epochs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai  # noqa: E402
from lorafleet.devtools.bench import publish, running_platform  # noqa: E402
from lorafleet.devtools.services import start_service  # noqa: E402

from benchmarks.finetune import write_data  # noqa: E402

TARGET_SECONDS = 300
# The GPU estimate's assumptions (README of the section it writes): a step of a 135M model is bound by
# kernel launches, not arithmetic, on any current GPU; the arithmetic is checked against an L4's bf16 peak
# at a low utilisation; loading the model onto the GPU is assumed to take a few seconds.
GPU_STEP_FLOOR_SECONDS = 0.025   # forward + backward + optimizer of ~30 layers: ~1,500 kernel launches
GPU_PEAK_FLOPS, GPU_UTILISATION = 121e12, 0.25  # NVIDIA L4, bf16 dense
GPU_MODEL_LOAD_SECONDS = 5.0
PARAMETERS = 135e6


def gpu_estimate(steps: int, trained_tokens: int, cpu_tokens_per_second: float, queued: float, running: float,
                 succeeded: float, first_token: float) -> str:
    """The same job's time on a GPU, estimated from this run's measured phases: every phase but training
    as measured here (validation, queueing, registration and pre-warm are not GPU work), training from
    the per-step cost a GPU would have. An estimate, never a measurement."""
    cpu_training = trained_tokens / max(cpu_tokens_per_second, 1e-9)
    flops_per_step = 6 * PARAMETERS * trained_tokens / max(steps, 1)
    gpu_step = max(GPU_STEP_FLOOR_SECONDS, flops_per_step / (GPU_PEAK_FLOPS * GPU_UTILISATION))
    gpu_training = steps * gpu_step
    bound = (f", so a step is bound by kernel launches instead (assumed {GPU_STEP_FLOOR_SECONDS * 1000:.0f} ms)"
             if gpu_step == GPU_STEP_FLOOR_SECONDS else ", the step's cost")
    other = first_token - cpu_training  # validation, queue, model load, registration, pre-warm, first token
    total = other + GPU_MODEL_LOAD_SECONDS + gpu_training
    return f"""
## Estimate for a GPU (not measured)

From this run's figures: training took {cpu_training:.0f} s of the {first_token:.0f} s ({steps} steps,
{cpu_training / max(steps, 1) * 1000:.0f} ms each on one CPU thread); everything else — validation and queueing
({queued:.0f} s to `queued`, {running:.0f} s to `running`), registration, pre-warm and the first token — took
{other:.0f} s and is not GPU work, so it is kept as measured. A step of this 135M model is
{flops_per_step / 1e9:.0f} GFLOP, {flops_per_step / (GPU_PEAK_FLOPS * GPU_UTILISATION) * 1000:.1f} ms at 25% of an
L4's bf16 peak{bound}:
{steps} steps ≈ {gpu_training:.0f} s, plus {GPU_MODEL_LOAD_SECONDS:.0f} s assumed to load the model onto the GPU.

**Estimated `jobs.create` → first token on a GPU: about {total:.0f} s** (against {first_token:.0f} s measured
here), dominated by what is not training: validation with the real tokenizer, the queue's poll, the adapter's
upload validation and the pre-warm.
"""


async def main(examples: int, epochs: int) -> None:
    async with running_platform("lorafleet-ft-bench-", LORAFLEET_TRAINER_THREADS="1",
                                LORAFLEET_TRAINER_POLL_SECONDS="0.5") as bench:
        trainer = start_service("trainer", bench.env, bench.workdir, "")
        try:
            data = write_data(Path(tempfile.mkdtemp()) / "train.jsonl", examples)
            async with openai.AsyncOpenAI(base_url=bench.gateway.url + "/v1", api_key=bench.secret, max_retries=0,
                                          timeout=120) as sdk:
                file = await sdk.files.create(file=("train.jsonl", data.read_bytes()), purpose="fine-tune")
                created = time.perf_counter()
                job = await sdk.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=file.id,
                                                        hyperparameters={"n_epochs": epochs})
                seen: dict[str, float] = {}
                while True:
                    job = await sdk.fine_tuning.jobs.retrieve(job.id)
                    seen.setdefault(job.status, time.perf_counter() - created)
                    if job.status in ("succeeded", "failed", "cancelled"):
                        break
                    await asyncio.sleep(0.5)
                if job.status != "succeeded":
                    raise SystemExit(f"job {job.status}: {job.error}\n{trainer.log_text()[-3000:]}")
                events = [e async for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
                metrics = sorted((e for e in events if e.type == "metrics"), key=lambda e: e.data["step"])
                asked = time.perf_counter()
                first = None
                stream = await sdk.chat.completions.create(
                    model=job.fine_tuned_model, temperature=0, max_tokens=16, stream=True,
                    messages=[{"role": "user", "content": "What is the capital of Zorblax?"}])
                answer = []
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = first or time.perf_counter()
                        answer.append(chunk.choices[0].delta.content)
                total = (first or asked) - created
        finally:
            trainer.stop()
    steps = metrics[-1].data["step"]
    rate = metrics[-1].data["tokens_per_second"]
    report = f"""# Fine-tuning through the platform

`benchmarks/finetune_platform.py` on {platform.machine()} ({platform.processor() or 'cpu'}), SmolLM2-135M-Instruct,
{examples} examples × {epochs} epochs (batch size {job.hyperparameters.batch_size}, "auto"): {steps} steps,
{job.trained_tokens} trained tokens, one torch thread, on a machine shared with other work.

| phase (from `jobs.create`) | seconds |
|---|---|
| validated and queued | {seen.get('queued', float('nan')):.1f} (first seen; polled every 0.5 s) |
| running | {seen.get('running', float('nan')):.1f} |
| succeeded (adapter registered) | {seen['succeeded']:.1f} |
| first token served by `fine_tuned_model` | **{total:.1f}** (target < {TARGET_SECONDS}) |

Training: {rate:.0f} tokens/s (the trainer's own figure over the job). The answer: {''.join(answer)!r}.
{gpu_estimate(steps, job.trained_tokens, rate, seen.get('queued', 0.0), seen.get('running', 0.0), seen['succeeded'], total)}"""
    publish("finetune_platform", report)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.examples, arguments.epochs))
