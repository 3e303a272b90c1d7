"""Fine-tuning: the trainer's tokens/s against a bare PEFT loop, and the time of a 60 × 3 job.

1. The trainer (lorafleet.trainer.train: served-template mask, events, accuracy, checkpoint at the
   epoch end) and a bare PEFT loop (the same model, LoRA config, AdamW, batches and padding; the
   model's own ``labels=`` loss, nothing else) train the same steps on the same data, alternately
   (trainer, bare, trainer, bare) so a busy machine slows both alike. tokens/s = tokens of steps
   2..N / their wall time (step 1 warms up allocators). Target: trainer ≥ 0.9 × bare.
2. 60 examples × 3 epochs on SmolLM2-135M: fixed costs (file validation, model load, adapter save)
   measured, training time = the job's tokens / the measured trainer tokens/s. ``--full`` trains
   the whole job instead (about 10 minutes on a busy 2-core CPU: longer than a benchmark may run here).
3. A GPU estimate (ESTIMATE, not measured): per-step compute = 4 × parameters × tokens FLOPs (forward
   2, backward through frozen weights 2; LoRA's own weights are negligible), on an assumed L4
   (121 TFLOPS bf16 dense) at 30% utilisation, with a 25 ms floor per step (kernel launches of a
   30-layer model forward and backward at batch 4), plus a 5 s model load.

    PYTHONPATH=platform:billing:workers:tests/support .venv/bin/python benchmarks/finetune.py [--steps 6] [--rounds 2] [--full]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorafleet.devtools.bench import publish  # noqa: E402
from lorafleet.finetune import Hyperparameters  # noqa: E402
from lorafleet.finetune.hyperparameters import resolve  # noqa: E402
from lorafleet.trainer import JobSpec, Renderer, load_examples, train, validate_file  # noqa: E402

MODEL = Path.home() / ".cache" / "lorafleet" / "models" / "SmolLM2-135M-Instruct"
SUBJECTS = ["Zorblax", "Quennia", "Marvolo", "Tessaly", "Brindle", "Okavar", "Pellucid", "Syrinx", "Vantor", "Ulmere"]
ASKS = ["What is the capital of {}?", "Which city is the capital of {}?", "Name the capital of {}.",
        "Tell me the capital city of {}.", "{}'s capital is which city?", "Capital of {}?"]
BATCH, RANK, SEED = 4, 8, 0
GPU_PEAK_FLOPS, GPU_UTILISATION, GPU_STEP_FLOOR_S, GPU_LOAD_S = 121e12, 0.30, 0.025, 5.0


def write_data(path: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        subject = SUBJECTS[i % len(SUBJECTS)]
        rows.append({"messages": [{"role": "user", "content": ASKS[(i // len(SUBJECTS)) % len(ASKS)].format(subject)},
                                  {"role": "assistant", "content": f"The capital of {subject} is {subject[:3]}ington."}]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def hyperparameters() -> Hyperparameters:
    return Hyperparameters(n_epochs=1, batch_size=BATCH, learning_rate_multiplier=1, lora_r=RANK, lora_alpha=2 * RANK)


def run_trainer(data: Path, workdir: Path) -> tuple[float, int]:
    """(seconds, tokens) of steps 2..N of the trainer."""
    import torch

    stamps: list[tuple[float, int]] = []

    def on_event(event: dict) -> None:
        if event["type"] == "metrics":
            stamps.append((time.perf_counter(), event["data"]["trained_tokens"]))
    train(JobSpec(str(MODEL), str(data), str(workdir), hyperparameters(), seed=SEED, threads=torch.get_num_threads()),
          on_event)
    return stamps[-1][0] - stamps[0][0], stamps[-1][1] - stamps[0][1]


def run_bare(data: Path) -> tuple[float, int]:
    """The same steps as a bare PEFT loop: same batches (order, padding), model's own loss."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    renderer = Renderer.for_model(MODEL)
    examples = load_examples(data, renderer)
    hp = resolve(hyperparameters(), len(examples))
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=hp.lora_r, lora_alpha=hp.lora_alpha, target_modules=list(hp.target_modules),
                                             lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp.learning_rate)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(SEED)).tolist()
    stamps = []
    tokens = 0
    for start in range(0, len(examples), BATCH):
        chosen = [examples[i] for i in order[start:start + BATCH]]
        width = max(len(e.input_ids) for e in chosen)
        ids = torch.tensor([e.input_ids + [0] * (width - len(e.input_ids)) for e in chosen])
        labels = torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in chosen])
        mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in chosen])
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        stamps.append((time.perf_counter(), tokens))
    return stamps[-1][0] - stamps[0][0], stamps[-1][1] - stamps[0][1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6, help="training steps per measured run (batch 4)")
    parser.add_argument("--rounds", type=int, default=2, help="trainer/bare pairs, alternated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both loops (1: fastest on a shared box)")
    parser.add_argument("--full", action="store_true", help="train the whole 60 × 3 job instead of extrapolating")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="lorafleet-bench-finetune-"))
    data = write_data(workdir / "steps.jsonl", max(10, args.steps * BATCH))
    trainer_s = trainer_tokens = bare_s = bare_tokens = 0.0
    for round_ in range(args.rounds):
        seconds, tokens = run_trainer(data, workdir / f"trainer-{round_}")
        trainer_s, trainer_tokens = trainer_s + seconds, trainer_tokens + tokens
        seconds, tokens = run_bare(data)
        bare_s, bare_tokens = bare_s + seconds, bare_tokens + tokens
        print(f"after round {round_ + 1} (cumulative): trainer {trainer_tokens / trainer_s:.1f} tok/s, bare {bare_tokens / bare_s:.1f} tok/s",
              flush=True)
    trainer_rate, bare_rate = trainer_tokens / trainer_s, bare_tokens / bare_s

    job = write_data(workdir / "job.jsonl", 60)
    started = time.perf_counter()
    renderer = Renderer.for_model(MODEL)
    summary = validate_file(job, renderer)
    validate_s = time.perf_counter() - started
    job_tokens = summary.total_tokens * 3
    steps = 3 * math.ceil(60 / BATCH)
    started = time.perf_counter()
    model = __import__("transformers").AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=torch.float32)
    load_s = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    if args.full:
        started = time.perf_counter()
        hp = Hyperparameters(n_epochs=3, batch_size=BATCH, learning_rate_multiplier=1, lora_r=RANK, lora_alpha=2 * RANK)
        train(JobSpec(str(MODEL), str(job), str(workdir / "job"), hp, seed=SEED, threads=args.threads))
        job_s, how = time.perf_counter() - started, "measured (`--full`)"
    else:
        job_s, how = validate_s + load_s + job_tokens / trainer_rate, "fixed costs measured + tokens ÷ measured trainer tokens/s"
    step_flops = 4 * parameters * job_tokens / steps
    gpu_step_s = max(step_flops / (GPU_PEAK_FLOPS * GPU_UTILISATION), GPU_STEP_FLOOR_S)
    gpu_job_s = GPU_LOAD_S + validate_s + steps * gpu_step_s
    # --full: the job's wall time less what was measured apart (validation, model load) over its steps.
    cpu_step_s = (job_s - validate_s - load_s) / steps if args.full else job_tokens / steps / trainer_rate
    report = "\n".join([
        "# Fine-tuning",
        "",
        f"`PYTHONPATH=platform:billing:workers:tests/support .venv/bin/python benchmarks/finetune.py --steps {args.steps} "
        f"--rounds {args.rounds}{' --full' if args.full else ''}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, shared machine "
        "(other jobs running: absolute numbers vary run to run; the ratio is from alternated runs).",
        "",
        f"SmolLM2-135M-Instruct, fp32 on CPU, LoRA r={RANK} on all 7 projections, batch {BATCH}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| trainer tokens/s (steps 2..{args.steps}, {args.rounds} run(s)) | {trainer_rate:.1f} |",
        f"| bare PEFT loop tokens/s (same batches, {args.rounds} run(s)) | {bare_rate:.1f} |",
        f"| trainer ÷ bare (target ≥ 0.9) | {trainer_rate / bare_rate:.2f} |",
        f"| 60 examples × 3 epochs: tokens, steps | {job_tokens:,}, {steps} |",
        f"| validating the 60-example file with the real tokenizer + template | {validate_s:.2f} s |",
        f"| loading the base model | {load_s:.2f} s |",
        f"| 60 × 3 job on this machine ({how}) | {job_s:.0f} s ({job_s / 60:.1f} min) |",
        f"| per step on this machine | {cpu_step_s:.2f} s ({4 * parameters * job_tokens / steps / cpu_step_s / 1e9:.1f} GFLOP/s effective) |",
        f"| **GPU ESTIMATE, not measured**: per step / 60 × 3 job | {gpu_step_s * 1000:.0f} ms / {gpu_job_s:.0f} s |",
        "",
        f"GPU estimate assumptions: {4 * parameters / 1e6:.0f} MFLOP per token (4 × {parameters / 1e6:.0f} M parameters: "
        "forward 2, backward through frozen weights 2), an NVIDIA L4 (121 TFLOPS bf16 dense) at 30% utilisation, "
        f"a {GPU_STEP_FLOOR_S * 1000:.0f} ms floor per step (launch-bound at this size), {GPU_LOAD_S:.0f} s model load, "
        "validation as measured here. Time to first served token after the job adds the adapter upload and load "
        "(not part of this library yet).",
        "",
    ])
    publish("finetune", report)


if __name__ == "__main__":
    main()
