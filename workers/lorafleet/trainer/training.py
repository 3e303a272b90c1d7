"""Trains a LoRA adapter of a served base model on a validated JSONL file: a plain PyTorch loop with PEFT.

Why a plain loop rather than TRL's ``SFTTrainer``: the loss mask is ours (``render.py``: assistant
tokens and their end-of-turn token, from the served template; TRL's ``assistant_only_loss`` needs
``{% generation %}`` markers SmolLM2's template lacks), resuming must land on an exact step with
the same data order and RNG state (a checkpoint holds adapter, optimizer, scheduler, RNG and step;
the order of epoch ``e`` is a permutation seeded by ``seed + e``, so it needs no saved state), the
cancel flag is checked between steps, and TRL is not a dependency (nor installed) — this loop
is the ~100 lines of it we need, and the benchmark holds it to a bare PEFT loop's speed.

fp32 on a CPU, bf16 on a GPU. Loss: mean cross-entropy over the label tokens of a batch.
``trained_tokens`` counts every token of every example the optimizer has seen (masked or not), so
a full job trains ``tokens in the file × n_epochs`` — what OpenAI bills: all tokens of the example.

Memory is bounded by construction (issue 28, finding 2), whatever the batch size: a batch (one
optimizer step) is run as micro-batches of at most ``tokens_per_step`` padded tokens (an example
longer than that alone), gradients accumulated; the decoder layers are gradient-checkpointed (only
each layer's input is kept for the backward pass, not its attention and MLP intermediates); and the
loss is computed over the vocabulary in chunks of positions, each chunk's logits recomputed in the
backward pass instead of kept (SmolLM2's 49,152-wide logits of 2,048 positions are 400 MB a copy).
The caller enforces a limit on top (runner.py: RLIMIT_AS and a resident-memory watchdog).

Validation (issue 28, finding 4) is bounded and counted: at the end of each epoch but the last, a
sampled pass over ``validation_sample`` examples of the validation file (the same ones on a resume);
at the end of the job, one full pass. ``validation_tokens`` counts every token those passes ran; it
is billed with the trained tokens (billing/pricing.py).

:func:`run_in_child` runs :func:`train` in a spawned process (a caller's event loop keeps beating
its queue heartbeats) and reports events, then one ``result`` or ``error``, on a queue.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from lorafleet.core.errors import LoraFleetError
from lorafleet.finetune.hyperparameters import Hyperparameters, resolve
from lorafleet.trainer.dataset import Limits, load_examples
from lorafleet.trainer.render import IGNORE_INDEX, Rendered, Renderer

CONTEXT = multiprocessing.get_context("spawn")  # fork would copy a caller's threads and event loop
STATE_FILE = "trainer_state.pt"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
PAUSE_FILE = "pause"  # in the output folder: the runner pausing the job, so the stop checkpoints first
GRADIENT_CLIP = 1.0
LOSS_CHUNK = 512  # positions whose logits exist at once in the loss (× the vocabulary × 4 bytes)
OUT_OF_MEMORY = "training_out_of_memory"

Event = dict[str, Any]


@dataclass(frozen=True)
class JobSpec:
    model_path: str
    training_file: str
    output_dir: str  # checkpoints/step-NNNNNN/ and adapter/ go here; a second run resumes from it
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    validation_file: str | None = None
    seed: int = 0
    checkpoint_every: int = 0  # steps; 0: only at the end of each epoch
    limits: Limits = field(default_factory=Limits)
    chat_template: str = ""  # the workers' LORAFLEET_CHAT_TEMPLATE setting (empty: as they default)
    # torch CPU threads; 0: torch's default (one per core). On a machine shared with other busy
    # processes, 1 was ~8x faster per step than 2 here (OpenMP threads spin against each other).
    threads: int = 0
    tokens_per_step: int = 2048  # padded tokens of one forward/backward pass (a longer example: its own)
    validation_sample: int = 32  # examples of a sampled validation pass
    remove_inputs: bool = False  # delete the data files once loaded (the runner's copies: a deleted file leaves)


@dataclass(frozen=True)
class TrainResult:
    status: str  # "succeeded" | "cancelled"
    steps_completed: int
    total_steps: int
    trained_tokens: int
    resumed_from_step: int
    adapter_dir: str | None  # the final adapter (None when cancelled)
    hyperparameters: dict[str, Any]
    validation_tokens: int = 0  # every token the validation passes ran


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step (an interrupted write leaves only a .tmp folder)."""
    folder = output_dir / CHECKPOINTS
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file())
    return done[-1] if done else None


def train(spec: JobSpec, on_event: Callable[[Event], None] = lambda event: None,
          should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    import torch
    import torch.utils.checkpoint
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    if spec.threads:
        torch.set_num_threads(spec.threads)
    model_path, output = Path(spec.model_path), Path(spec.output_dir)
    renderer = Renderer.for_model(model_path, spec.chat_template)
    train_on_inputs = spec.hyperparameters.train_on_inputs
    examples = load_examples(Path(spec.training_file), renderer, spec.limits, train_on_inputs=train_on_inputs)
    valid: list[Rendered] = []
    if spec.validation_file:
        valid = load_examples(Path(spec.validation_file), renderer, Limits(**{**asdict(spec.limits), "min_examples": 1}),
                              train_on_inputs=train_on_inputs, param="validation_file")
    if spec.remove_inputs:  # in memory now; a resume fetches the file again (and fails if it was deleted)
        for name in (spec.training_file, spec.validation_file):
            if name:
                Path(name).unlink(missing_ok=True)
    hp = resolve(spec.hyperparameters, len(examples))
    steps_per_epoch = math.ceil(len(examples) / hp.batch_size)
    total_steps = hp.n_epochs * steps_per_epoch
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")

    torch.manual_seed(spec.seed)
    base = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.bfloat16 if gpu else torch.float32)
    base.config.use_cache = False
    # Only each decoder layer's input is kept for backward; its intermediates are recomputed (non-reentrant:
    # the frozen embeddings' output needs no grad for the LoRA weights inside the layer to get theirs).
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                      target_modules=list(hp.target_modules), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(base, lora).to(device)
    model.peft_config["default"].base_model_name_or_path = model_path.name  # not this machine's path
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=hp.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total_steps)
    pad_id = renderer.tokenizer.pad_token_id if renderer.tokenizer.pad_token_id is not None else 0

    step, trained_tokens, validation_tokens = 0, 0, 0
    checkpoint = latest_checkpoint(output)
    if checkpoint is not None:
        state = torch.load(checkpoint / STATE_FILE, weights_only=True)
        if state["total_steps"] != total_steps:
            raise LoraFleetError("the checkpoint belongs to another job (its step count differs)",
                                 code="checkpoint_mismatch")
        set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors", device=str(device)))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step, trained_tokens = int(state["step"]), int(state["trained_tokens"])
        validation_tokens = int(state.get("validation_tokens", 0))
        on_event(_message(f"Resuming from the checkpoint at step {step}"))
    resumed_from = step
    on_event(_message(f"Training {len(examples)} examples for {hp.n_epochs} epochs: {total_steps} steps"))

    def batch(indices: list[int], data: list[Rendered]) -> tuple[Any, Any, Any]:
        width = max(len(data[i].input_ids) for i in indices)
        ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
        labels = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            n = len(data[i].input_ids)
            ids[row, :n] = torch.tensor(data[i].input_ids)
            labels[row, :n] = torch.tensor(data[i].labels)  # padding stays out of the loss by position
            mask[row, :n] = 1
        return ids.to(device), labels.to(device), mask.to(device)

    causal = model.get_base_model()
    decoder, lm_head = causal.model, causal.get_output_embeddings()

    def chunk_loss(hidden: Any, target: Any) -> tuple[Any, Any]:
        logits = lm_head(hidden).float()
        loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
        return loss, (logits.argmax(-1) == target).sum()

    def loss_of(ids: Any, labels: Any, mask: Any) -> tuple[Any, int, int]:
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
        target = labels[:, 1:]
        counted = target != IGNORE_INDEX
        hidden, target = hidden[counted], target[counted]  # only positions in the loss reach the vocabulary
        loss = hidden.new_zeros((), dtype=torch.float32)
        correct = 0
        for start in range(0, target.shape[0], LOSS_CHUNK):
            part = (hidden[start:start + LOSS_CHUNK], target[start:start + LOSS_CHUNK])
            if torch.is_grad_enabled():  # the chunk's logits are recomputed in backward, not kept
                piece, right = torch.utils.checkpoint.checkpoint(chunk_loss, *part, use_reentrant=False)
            else:
                piece, right = chunk_loss(*part)
            loss, correct = loss + piece, correct + int(right)
        return loss, int(target.shape[0]), correct

    def micro_batches(indices: list[int], data: list[Rendered]) -> list[list[int]]:
        """``indices`` split into runs whose padded size (rows × longest) stays within tokens_per_step."""
        runs: list[list[int]] = []
        for i in sorted(indices, key=lambda i: len(data[i].input_ids)):  # similar lengths pad less
            longest = len(data[i].input_ids)
            if runs and (len(runs[-1]) + 1) * longest <= spec.tokens_per_step:
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs

    def counted_positions(indices: list[int], data: list[Rendered]) -> int:
        return sum(sum(1 for label in data[i].labels[1:] if label != IGNORE_INDEX) for i in indices)

    def validation_loss(indices: list[int]) -> tuple[float | None, float | None]:
        """The mean loss and the mean token accuracy (OpenAI's valid_mean_token_accuracy) of ``indices``."""
        nonlocal validation_tokens
        if not indices:
            return None, None
        model.eval()
        total, count, right = 0.0, 0, 0
        with torch.no_grad():
            for run in micro_batches(indices, valid):
                loss, n, correct = loss_of(*batch(run, valid))
                total, count, right = total + loss.item(), count + n, right + correct
                validation_tokens += sum(len(valid[i].input_ids) for i in run)
        model.train()
        return total / max(count, 1), right / max(count, 1)

    def sampled(epoch: int) -> list[int]:
        """The sampled pass of an epoch's end: the same examples on a resume (seeded by the epoch)."""
        order = torch.randperm(len(valid), generator=torch.Generator().manual_seed(spec.seed + 7919 * (epoch + 1)))
        return order[:spec.validation_sample].tolist()

    saved = step  # the step of the last checkpoint (the one resumed from, at first)

    def save_checkpoint(at: int) -> None:
        folder = output / CHECKPOINTS / f"step-{at:06d}"
        temporary = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        model.save_pretrained(str(temporary), safe_serialization=True)
        torch.save({"step": at, "total_steps": total_steps, "trained_tokens": trained_tokens,
                    "validation_tokens": validation_tokens,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state()}, temporary / STATE_FILE)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(temporary, folder)  # complete or absent: latest_checkpoint never sees half of one
        nonlocal saved
        saved = at

    order_epoch, order = -1, []
    started, first_step, first_tokens = time.monotonic(), step, trained_tokens
    while step < total_steps:
        if should_stop():
            if (output / PAUSE_FILE).exists() and step > saved:
                # Paused (the runner says so by this file before it stops us): the steps done are kept, so the
                # resume trains none of them twice (issue 30, part 4).
                save_checkpoint(step)
                on_event(_message(f"Checkpoint saved at step {step}", step=step))
            on_event(_message(f"Cancelled after step {step}"))
            return TrainResult("cancelled", step, total_steps, trained_tokens, resumed_from, None, asdict(hp),
                               validation_tokens)
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(spec.seed + epoch)).tolist()
            order_epoch = epoch
        indices = order[position * hp.batch_size:(position + 1) * hp.batch_size]
        in_loss = max(counted_positions(indices, examples), 1)  # the batch's mean, over all its micro-batches
        loss_total, counted, correct, tokens = 0.0, 0, 0, 0
        for run in micro_batches(indices, examples):
            ids, labels, mask = batch(run, examples)
            loss_sum, n, right = loss_of(ids, labels, mask)
            if loss_sum.requires_grad:  # a micro-batch with no position in the loss has nothing to give back
                (loss_sum / in_loss).backward()
            loss_total, counted, correct = loss_total + loss_sum.item(), counted + n, correct + right
            tokens += int(mask.sum())
            del ids, labels, mask, loss_sum
        torch.nn.utils.clip_grad_norm_(parameters, GRADIENT_CLIP)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        trained_tokens += tokens
        elapsed = time.monotonic() - started
        data: dict[str, Any] = {
            "step": step, "total_steps": total_steps, "epoch": epoch + 1,
            "train_loss": loss_total / max(counted, 1),
            "train_mean_token_accuracy": correct / max(counted, 1),
            "trained_tokens": trained_tokens,
            "tokens_per_second": (trained_tokens - first_tokens) / elapsed if elapsed > 0 else 0.0,
            "eta_seconds": elapsed / (step - first_step) * (total_steps - step),
        }
        epoch_end = step % steps_per_epoch == 0
        if valid and step == total_steps:  # the end: one full pass
            loss, accuracy = validation_loss(list(range(len(valid))))
            data["valid_loss"] = data["full_valid_loss"] = loss
            data["valid_mean_token_accuracy"] = data["full_valid_mean_token_accuracy"] = accuracy
        elif valid and epoch_end:  # the end of an epoch: a sampled pass
            data["valid_loss"], data["valid_mean_token_accuracy"] = validation_loss(sampled(epoch))
        data["validation_tokens"] = validation_tokens
        on_event({"type": "metrics", "level": "info",
                  "message": f"Step {step}/{total_steps}: training loss={data['train_loss']:.4f}", "data": data})
        if epoch_end or (spec.checkpoint_every and step % spec.checkpoint_every == 0):
            save_checkpoint(step)
            on_event(_message(f"Checkpoint saved at step {step}", step=step))
    final = output / ADAPTER
    shutil.rmtree(final, ignore_errors=True)
    model.save_pretrained(str(final), safe_serialization=True)
    on_event(_message(f"Training finished: {trained_tokens} trained tokens"))
    return TrainResult("succeeded", step, total_steps, trained_tokens, resumed_from, str(final), asdict(hp),
                       validation_tokens)


def _message(text: str, **data: Any) -> Event:
    return {"type": "message", "level": "info", "message": text, "data": data or None}


def run_in_child(spec: JobSpec, events: Any, cancel: Any) -> BaseProcess:
    """Start :func:`train` in a spawned process; ``events`` (a ``CONTEXT.Queue()``) receives every
    event, then ``{"type": "result", "data": TrainResult fields}`` or ``{"type": "error", "error":
    {"code", "message", "param"}}``. Setting ``cancel`` (a ``CONTEXT.Event()``) stops training
    before its next step."""
    process = CONTEXT.Process(target=_child, args=(spec, events, cancel), name="lorafleet-finetune", daemon=True)
    process.start()
    return process


def _child(spec: JobSpec, events: Any, cancel: Any, work: Callable[..., TrainResult] = train) -> None:
    try:
        result = work(spec, events.put, cancel.is_set)
    except LoraFleetError as exc:
        events.put({"type": "error", "error": {"code": exc.code, "message": exc.message, "param": exc.param}})
    except MemoryError:  # RLIMIT_AS refused an allocation (runner.py): the job's own limit, not the host's
        events.put({"type": "error", "error": {"code": OUT_OF_MEMORY, "param": None,
                                               "message": "training needed more memory than a job may use"}})
    except RuntimeError as exc:
        if "can't allocate memory" not in str(exc) and "DefaultCPUAllocator" not in str(exc):
            events.put({"type": "error", "error": {"code": "training_failed", "param": None,
                                                   "message": f"{type(exc).__name__}: {str(exc)[:500]}"}})
        else:  # torch's allocator says it with a RuntimeError
            events.put({"type": "error", "error": {"code": OUT_OF_MEMORY, "param": None,
                                                   "message": "training needed more memory than a job may use"}})
    except Exception as exc:  # the job fails with a message; the caller's process lives on
        events.put({"type": "error", "error": {"code": "training_failed", "param": None,
                                               "message": f"{type(exc).__name__}: {str(exc)[:500]}"}})
    else:
        events.put({"type": "result", "data": asdict(result)})
