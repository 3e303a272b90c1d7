"""Fine-tuning jobs: ``/v1/fine_tuning/jobs``."""

from lorafleet.gateway.fine_tuning.controller import FineTuningController

__all__ = ["FineTuningController"]
