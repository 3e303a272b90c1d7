"""Fine-tuning: validate a JSONL file with the served model's tokenizer and template, render examples
with the served template's loss mask, and train a LoRA adapter that the platform can serve at once.

A library for now (issue 23's foundation): the files API, job routes, queue and billing build on it.
"""

from lorafleet.finetune.dataset import Limits, Summary, TrainingFileInvalid, load_examples, validate_file
from lorafleet.finetune.hyperparameters import Hyperparameters, Resolved, resolve
from lorafleet.finetune.render import Renderer, Rendered
from lorafleet.finetune.trainer import CONTEXT, JobSpec, TrainResult, latest_checkpoint, run_in_child, train

__all__ = [
    "CONTEXT", "Hyperparameters", "JobSpec", "Limits", "Rendered", "Renderer", "Resolved", "Summary",
    "TrainResult", "TrainingFileInvalid", "latest_checkpoint", "load_examples", "resolve", "run_in_child",
    "train", "validate_file",
]
