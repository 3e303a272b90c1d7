"""Fine-tuning hyperparameters: OpenAI's three (each ``"auto"`` or a number) plus bounded LoRA settings.

``"auto"`` is resolved from the dataset size with OpenAI's documented rule, tuned for LoRA (issue 30,
part 8): 3 epochs, or enough that the model sees ``MIN_TARGET_EXAMPLES`` examples in all (at most 25
epochs for tiny files, fewer for huge ones), a batch of about 0.2% of the examples (1 to 256), and a
learning rate multiplier of ``AUTO_MULTIPLIER``. The learning rate is ``BASE_LEARNING_RATE × multiplier``.

Why not OpenAI's numbers as they are (100 examples seen, multiplier 1 on 2e-4): they are made for
full fine-tuning of large models. A rank-8 LoRA (alpha 16) on a small base moves far fewer weights per
step; a new user's 48 examples × 3 epochs at 2e-4 did not teach a simple fact, 6 epochs at 4× did.
So "auto" aims at 250 examples seen (48 → 6 epochs; 100 or more → OpenAI's 3) at 8e-4, the rate
LoRA recipes use at this rank (1e-4 to 1e-3). Explicit values are taken as given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from lorafleet.adapters.architecture import SUPPORTED_MODULES
from lorafleet.core.errors import InvalidRequest

Auto = Literal["auto"]
BASE_LEARNING_RATE = 2e-4
DEFAULT_EPOCHS = 3
MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 250, 25_000
MAX_AUTO_EPOCHS = 25
AUTO_MULTIPLIER = 4.0
MAX_EPOCHS, MAX_BATCH_SIZE, MAX_MULTIPLIER = 50, 256, 10.0
MAX_RANK, MAX_ALPHA, MAX_DROPOUT = 64, 512.0, 0.5
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Hyperparameters:
    n_epochs: int | Auto = "auto"
    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    train_on_inputs: bool = False


@dataclass(frozen=True)
class Resolved:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: tuple[str, ...] = field(default=DEFAULT_TARGETS)
    train_on_inputs: bool = False


def _bounded(name: str, value: float, low: float, high: float, *, integer: bool, low_open: bool = False) -> None:
    if isinstance(value, bool) or (integer and not isinstance(value, int)) or not isinstance(value, int | float):
        raise InvalidRequest(f"{name} must be {'an integer' if integer else 'a number'} or \"auto\"", param=name)
    if value > high or value < low or (low_open and value == low) or math.isnan(value):
        raise InvalidRequest(f"{name} must be {'above' if low_open else 'at least'} {low} and at most {high}",
                             param=name)


def resolve(hp: Hyperparameters, n_examples: int) -> Resolved:
    """Concrete values for a dataset of ``n_examples``; out-of-bounds values raise InvalidRequest."""
    if hp.n_epochs == "auto":
        epochs = DEFAULT_EPOCHS
        if n_examples * epochs < MIN_TARGET_EXAMPLES:
            epochs = min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / n_examples))
        elif n_examples * epochs > MAX_TARGET_EXAMPLES:
            epochs = max(1, MAX_TARGET_EXAMPLES // n_examples)
    else:
        _bounded("n_epochs", hp.n_epochs, 1, MAX_EPOCHS, integer=True)
        epochs = hp.n_epochs
    if hp.batch_size == "auto":
        batch = max(1, min(MAX_BATCH_SIZE, round(0.002 * n_examples)))
    else:
        _bounded("batch_size", hp.batch_size, 1, MAX_BATCH_SIZE, integer=True)
        batch = hp.batch_size
    if hp.learning_rate_multiplier == "auto":
        multiplier = AUTO_MULTIPLIER
    else:
        _bounded("learning_rate_multiplier", hp.learning_rate_multiplier, 0, MAX_MULTIPLIER, integer=False,
                 low_open=True)
        multiplier = float(hp.learning_rate_multiplier)
    _bounded("lora_r", hp.lora_r, 1, MAX_RANK, integer=True)
    _bounded("lora_alpha", hp.lora_alpha, 0, MAX_ALPHA, integer=False, low_open=True)
    _bounded("lora_dropout", hp.lora_dropout, 0, MAX_DROPOUT, integer=False)
    unknown = [m for m in hp.target_modules if m not in SUPPORTED_MODULES]
    if not hp.target_modules or unknown or len(set(hp.target_modules)) != len(hp.target_modules):
        raise InvalidRequest(f"target_modules must be distinct names among {', '.join(SUPPORTED_MODULES)}",
                             param="target_modules")
    return Resolved(epochs, batch, multiplier, BASE_LEARNING_RATE * multiplier, hp.lora_r, float(hp.lora_alpha),
                    float(hp.lora_dropout), tuple(hp.target_modules), hp.train_on_inputs)
