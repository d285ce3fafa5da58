"""Single-machine training, evaluation and checkpoints, built from one JobConfig.

The distributed trainer (metadist.distributed) reuses the task construction, the checkpoint format and the
learners' step functions from here; only the loop around them differs.
"""

from metadist.training.checkpoint import Checkpoint
from metadist.training.evaluation import Estimate, evaluate
from metadist.training.tasks import ModelSpec, build, make_sampler, model_spec
from metadist.training.trainer import LocalTrainer, TrainResult

__all__ = ["Checkpoint", "Estimate", "LocalTrainer", "ModelSpec", "TrainResult", "build", "evaluate", "make_sampler", "model_spec"]
