"""What every trainer, evaluator and server builds from a job: its task samplers, the model spec and builder, the checkpoint format and the run folders that own checkpoints."""

from metadist.core.checkpoint import Checkpoint, LoopState
from metadist.core.spec import ModelSpec, autocast, build, model_spec, resolve_device, warn_if_slow_precision
from metadist.core.tasks import make_sampler, open_shards, task_indices

__all__ = ["Checkpoint", "LoopState", "ModelSpec", "autocast", "build", "make_sampler", "model_spec", "open_shards", "resolve_device", "task_indices", "warn_if_slow_precision"]
