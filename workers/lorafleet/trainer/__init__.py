"""The trainer (`lorafleet trainer`): validate a JSONL file with the served model's tokenizer and
template (dataset.py), render examples with the served template's loss mask (render.py), train a LoRA
adapter the platform can serve at once (training.py), and run the queued jobs one at a time
(runner.py). The jobs' API side (schemas, create/list/cancel) is the platform's `lorafleet.finetune`.
"""

from lorafleet.trainer.dataset import Limits, Summary, TrainingFileInvalid, load_examples, validate_file
from lorafleet.trainer.render import Rendered, Renderer
from lorafleet.trainer.training import CONTEXT, JobSpec, TrainResult, latest_checkpoint, run_in_child, train

__all__ = [
    "CONTEXT", "JobSpec", "Limits", "Rendered", "Renderer", "Summary", "TrainResult", "TrainingFileInvalid",
    "latest_checkpoint", "load_examples", "run_in_child", "train", "validate_file",
]
