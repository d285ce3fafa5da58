"""What a model is built for (`ModelSpec`, recorded in every checkpoint) and how a job's model and learner are built.

The local trainer, the workers, the parameter server, `eval`, `predict` and `serve` build them the same way, so a
checkpoint written by one is understood by the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from metadist.algorithms import build_learner
from metadist.algorithms.base import MetaLearner
from metadist.config import JobConfig
from metadist.core.tasks import TaskSampler, open_train_shards
from metadist.data import EpisodeSampler, MultiSourceSampler
from metadist.models import build_model

log = logging.getLogger(__name__)

# Regression inputs are scalars; outputs are one value per point.
REGRESSION_SHAPE = (1,)


@dataclass(frozen=True)
class ModelSpec:
    """What building the network needs besides the configuration: recorded in every checkpoint."""

    kind: str  # "classification" | "regression"
    input_shape: tuple[int, ...]  # [C, H, W] or [features]
    outputs: int | None  # ways of the classification head, 1 for regression, None for embedding learners
    preprocessing: dict | None  # metadist.data.ImagePreprocessing of the training shards (None for regression)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "input_shape": list(self.input_shape), "outputs": self.outputs, "preprocessing": self.preprocessing}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(d["kind"], tuple(d["input_shape"]), d["outputs"], d["preprocessing"])


def model_spec(job: JobConfig, train_sampler: TaskSampler | None = None) -> ModelSpec:
    """What the job's model is built for: the training shards' example shape and preprocessing (every training source
    shares them), the head's size."""
    if job.data.regression is not None:
        return ModelSpec("regression", REGRESSION_SHAPE, 1, None)
    if isinstance(train_sampler, (EpisodeSampler, MultiSourceSampler)):
        shards = train_sampler.shards
    else:
        shards = open_train_shards(job)
    outputs = None if job.algorithm.is_metric else job.data.episode.ways
    return ModelSpec("classification", tuple(shards.manifest.example_shape), outputs, shards.manifest.preprocessing)


def build(job: JobConfig, spec: ModelSpec, *, seed: int | None = None) -> tuple[torch.nn.Module, MetaLearner]:
    """The model template and its learner. Initial weights depend only on the seed."""
    torch.manual_seed(job.train.seed if seed is None else seed)
    model = build_model(job.model, input_shape=spec.input_shape, outputs=spec.outputs)
    episode = job.data.episode
    return model, build_learner(job.algorithm, model, spec.kind, ways=episode.ways, shots=episode.shots)


def resolve_device(name: str) -> torch.device:
    """train.device as a torch device: 'auto' is CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but torch sees no CUDA device; use 'auto' or 'cpu'")
    return device


def warn_if_slow_precision(precision: str, device: torch.device) -> None:
    """bf16 on a CPU is fast only with AMX or AVX-512 BF16 instructions; without them (AVX2) a bf16 convolution runs
    about 20 times slower than fp32 (docs/benchmarks.md)."""
    if precision == "bf16" and device.type == "cpu" and torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):
        log.warning("train.precision bf16 on a CPU with %s only: bf16 matrix products and convolutions will be much "
                    "slower than fp32 here (bf16 is for GPUs and CPUs with AMX or AVX-512 BF16)",
                    torch.backends.cpu.get_cpu_capability())


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context of train.precision on `device`: bf16 matrix products and convolutions under 'bf16', nothing
    under 'fp32'. Parameters and gradients keep their own dtype (fp32): autocast casts copies for each operation."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
