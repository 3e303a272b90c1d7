""""auto" hyperparameters resolve from the dataset size; explicit ones are bounded."""

from __future__ import annotations

import pytest
from lorafleet.core.errors import InvalidRequest
from lorafleet.finetune.hyperparameters import BASE_LEARNING_RATE, Hyperparameters, resolve


@pytest.mark.parametrize(("n", "epochs", "batch"), [(10, 25, 1), (20, 13, 1), (48, 6, 1), (60, 5, 1), (84, 3, 1),
                                                      (1000, 3, 2), (20_000, 1, 40), (500_000, 1, 256)])
def test_auto_follows_the_dataset_size(n, epochs, batch):
    """OpenAI's rule aiming at 250 examples seen (not 100: a LoRA learns less per step), 4× the LoRA rate."""
    resolved = resolve(Hyperparameters(), n)
    assert (resolved.n_epochs, resolved.batch_size) == (epochs, batch)
    assert (resolved.learning_rate_multiplier, resolved.learning_rate) == (4.0, 4 * BASE_LEARNING_RATE)


def test_explicit_values_are_kept():
    resolved = resolve(Hyperparameters(n_epochs=4, batch_size=8, learning_rate_multiplier=2.5, lora_r=16,
                                       lora_alpha=32, target_modules=("q_proj", "v_proj")), 100)
    assert (resolved.n_epochs, resolved.batch_size, resolved.learning_rate) == (4, 8, 2.5 * BASE_LEARNING_RATE)
    assert resolved.target_modules == ("q_proj", "v_proj")


@pytest.mark.parametrize(("changes", "param"), [
    ({"n_epochs": 0}, "n_epochs"), ({"n_epochs": 51}, "n_epochs"), ({"n_epochs": 2.5}, "n_epochs"),
    ({"batch_size": 257}, "batch_size"), ({"batch_size": True}, "batch_size"),
    ({"learning_rate_multiplier": 0}, "learning_rate_multiplier"),
    ({"learning_rate_multiplier": float("nan")}, "learning_rate_multiplier"),
    ({"lora_r": 65}, "lora_r"), ({"lora_alpha": 0}, "lora_alpha"), ({"lora_dropout": 0.6}, "lora_dropout"),
    ({"target_modules": ("q_proj", "lm_head")}, "target_modules"), ({"target_modules": ()}, "target_modules"),
])
def test_out_of_bounds_values_name_their_param(changes, param):
    with pytest.raises(InvalidRequest) as caught:
        resolve(Hyperparameters(**changes), 100)
    assert caught.value.param == param
