"""The task samplers of a job: training and held-out episodes (or regression tasks) from its configuration.

Episodes are a function of (seed, step, task index), so whoever samples task i of step s (one process or any of N
workers) sees the same episode, and held-out tasks come from a seed stream of their own.
"""

from __future__ import annotations

from metadist.config import DEFAULT_VERIFY_CHECKSUMS, EpisodeConfig, JobConfig, TaskSourceConfig
from metadist.data import EpisodeSampler, RegressionSampler, ShardSet, resolve_uri

# Held-out tasks are drawn from a seed stream of their own, so evaluation never replays training episodes.
EVAL_SEED_OFFSET = 1_000_003


def open_shards(source: TaskSourceConfig, *, progress: bool = True, verify_checksums: bool = DEFAULT_VERIFY_CHECKSUMS) -> ShardSet:
    """The shard set a task source names (bundled:// sets are imported into the local cache on first use)."""
    return ShardSet(
        resolve_uri(source.uri, progress=progress), storage_options=source.storage_options,
        max_open_shards=source.max_open_shards, verify_checksums=verify_checksums,
    )


def make_sampler(job: JobConfig, split: str, *, progress: bool = True, episode: EpisodeConfig | None = None,
                 source: TaskSourceConfig | None = None) -> EpisodeSampler | RegressionSampler:
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
    shards = open_shards(source, progress=progress, verify_checksums=data.verify_checksums)
    return EpisodeSampler(shards, episode, split=source.split, seed=seed, cache_mb=source.cache_mb)


def task_indices(meta_batch: int) -> range:
    """The tasks of one outer step. Episodes are a function of (seed, step, index), so whoever computes task i of
    step s — one process or any of N workers — sees the same episode; the meta-batch means the same at any size."""
    return range(meta_batch)


def make_test_sampler(job: JobConfig, *, progress: bool = True) -> EpisodeSampler | RegressionSampler | None:
    """The held-out task sampler, or None when the job names no test shards."""
    has_test = job.data.regression is not None or job.data.test is not None
    return make_sampler(job, "test", progress=progress) if has_test else None
