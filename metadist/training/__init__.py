"""The outer training loop (step source + tracker by composition), the single-process step source, and held-out evaluation."""

from metadist.training.evaluation import Estimate, evaluate
from metadist.training.local import LocalSteps, LocalTrainer
from metadist.training.loop import StepOutcome, StepSource, Trainer, TrainResult

__all__ = ["Estimate", "LocalSteps", "LocalTrainer", "StepOutcome", "StepSource", "TrainResult", "Trainer", "evaluate"]
