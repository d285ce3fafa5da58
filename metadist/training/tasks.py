"""From a job configuration to the pieces every trainer needs: task samplers, the model, the learner.

The local trainer, the distributed workers, `metadist eval` and `metadist predict` all build these the same way,
so a checkpoint written by one is understood by the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metadist.algorithms import build_learner
from metadist.algorithms.base import MetaLearner
from metadist.config import EpisodeConfig, JobConfig, TaskSourceConfig
from metadist.data import EpisodeSampler, RegressionSampler, ShardSet, resolve_uri
from metadist.models import build_model

# Held-out tasks are drawn from a seed stream of their own, so evaluation never replays training episodes.
EVAL_SEED_OFFSET = 1_000_003
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


def open_shards(source: TaskSourceConfig, *, progress: bool = True) -> ShardSet:
    return ShardSet(
        resolve_uri(source.uri, progress=progress), storage_options=source.storage_options, max_open_shards=source.max_open_shards
    )


def make_sampler(job: JobConfig, split: str, *, progress: bool = True, episode: EpisodeConfig | None = None,
                 source: TaskSourceConfig | None = None):
    """The task sampler for split "train" or "test": deterministic in (seed, step, task index)."""
    data = job.data
    seed = job.train.seed + (0 if split == "train" else EVAL_SEED_OFFSET)
    if data.regression is not None:
        r = data.regression
        return RegressionSampler(r.family, shots=r.shots, queries=r.queries, seed=seed)
    source = source or (data.train if split == "train" else data.test)
    if source is None:
        raise ValueError(f"data.{split} is not set: no shard set to draw {split} tasks from")
    if episode is None:
        episode = data.episode if split == "train" else data.test_episode
    return EpisodeSampler(open_shards(source, progress=progress), episode, split=source.split, seed=seed, cache_mb=source.cache_mb)


def model_spec(job: JobConfig, train_sampler=None) -> ModelSpec:
    if job.data.regression is not None:
        return ModelSpec("regression", REGRESSION_SHAPE, 1, None)
    shards = train_sampler.shards if train_sampler is not None else open_shards(job.data.train)
    metric = job.algorithm.name in ("protonet", "matching", "siamese")
    return ModelSpec(
        "classification", tuple(shards.manifest.example_shape), None if metric else job.data.episode.ways, shards.manifest.preprocessing
    )


def build(job: JobConfig, spec: ModelSpec, *, seed: int | None = None) -> tuple[torch.nn.Module, MetaLearner]:
    """The model template and its learner. Initial weights depend only on the seed."""
    torch.manual_seed(job.train.seed if seed is None else seed)
    model = build_model(job.model, input_shape=spec.input_shape, outputs=spec.outputs)
    return model, build_learner(job.algorithm, model, spec.kind)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but torch sees no CUDA device; use 'auto' or 'cpu'")
    return device


def task_indices(meta_batch: int) -> range:
    """The tasks of one outer step. Episodes are a function of (seed, step, index), so whoever computes task i of
    step s — one process or any of N workers — sees the same episode; the meta-batch means the same at any size."""
    return range(meta_batch)
