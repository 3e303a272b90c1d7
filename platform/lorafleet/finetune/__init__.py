"""Fine-tuning, the API side: job schemas, create/list/cancel (jobs.py) and the hyperparameters'
defaults (hyperparameters.py). What trains (runner, dataset, render, training) is the trainer's, in
lorafleet-workers: `lorafleet.trainer`.
"""

from lorafleet.finetune.hyperparameters import Hyperparameters, Resolved, resolve

__all__ = ["Hyperparameters", "Resolved", "resolve"]
