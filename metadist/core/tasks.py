"""The task samplers of a job: training and held-out episodes (or regression tasks) from its configuration.

Episodes are a function of (seed, step, task index), so whoever samples task i of step s (one process or any of N
workers) sees the same episode, and held-out tasks come from a seed stream of their own.
"""

from __future__ import annotations

from metadist.config import DEFAULT_VERIFY_CHECKSUMS, EpisodeConfig, JobConfig, TaskSourceConfig
from metadist.data import EpisodeSampler, MultiSourceSampler, RegressionSampler, ShardSet, check_same_examples, resolve_uri

TaskSampler = EpisodeSampler | MultiSourceSampler | RegressionSampler

# Held-out tasks are drawn from a seed stream of their own, so evaluation never replays training episodes.
EVAL_SEED_OFFSET = 1_000_003


def open_shards(source: TaskSourceConfig, *, progress: bool = True, verify_checksums: bool = DEFAULT_VERIFY_CHECKSUMS) -> ShardSet:
    """The shard set a task source names (bundled:// sets are imported into the local cache on first use)."""
    return ShardSet(
        resolve_uri(source.uri, progress=progress), storage_options=source.storage_options,
        max_open_shards=source.max_open_shards, verify_checksums=verify_checksums,
    )


def make_sampler(job: JobConfig, split: str, *, progress: bool = True, episode: EpisodeConfig | None = None,
                 source: TaskSourceConfig | None = None) -> TaskSampler:
    """The task sampler for split "train" or "test": deterministic in (seed, step, task index).

    Training from several sources (data.train as a list) gives a MultiSourceSampler over one EpisodeSampler per
    source, all on the same seed; a single source (or a list of one) gives its EpisodeSampler, as it always has.
    """
    data = job.data
    seed = job.train.seed + (0 if split == "train" else EVAL_SEED_OFFSET)
    if data.regression is not None:
        r = data.regression
        return RegressionSampler(r.family, shots=r.shots, queries=r.queries, seed=seed)
    if episode is None:
        episode = data.episode if split == "train" else data.test_episode
    if source is not None:
        sources = [(source, 1.0)]
    elif split == "train":
        sources = data.train_sources
    else:
        sources = [] if data.test is None else [(data.test, 1.0)]
    if not sources:
        raise ValueError(f"data.{split} is not set: no shard set to draw {split} tasks from")
    samplers = [
        EpisodeSampler(open_shards(s, progress=progress, verify_checksums=data.verify_checksums), episode, split=s.split,
                       seed=seed, cache_mb=s.cache_mb)
        for s, _ in sources
    ]
    if len(samplers) == 1:
        return samplers[0]
    return MultiSourceSampler(samplers, [w for _, w in sources], seed=seed, names=source_names(len(samplers)))


def source_names(count: int) -> list[str]:
    """Where each training source is configured, for errors: data.train[0], data.train[1] ..."""
    return [f"data.train[{i}]" for i in range(count)]


def open_train_shards(job: JobConfig, *, progress: bool = True) -> ShardSet:
    """The shard set the model is built for: the (first) training source's, after checking that every training
    source has its example shape and preprocessing."""
    shards = [open_shards(s, progress=progress, verify_checksums=job.data.verify_checksums) for s, _ in job.data.train_sources]
    if not shards:
        raise ValueError("data.train is not set: no shard set to build the model for")
    check_same_examples(shards, source_names(len(shards)))
    return shards[0]


def task_indices(meta_batch: int) -> range:
    """The tasks of one outer step. Episodes are a function of (seed, step, index), so whoever computes task i of
    step s — one process or any of N workers — sees the same episode; the meta-batch means the same at any size."""
    return range(meta_batch)


def make_test_sampler(job: JobConfig, *, progress: bool = True) -> TaskSampler | None:
    """The held-out task sampler, or None when the job names no test shards."""
    has_test = job.data.regression is not None or job.data.test is not None
    return make_sampler(job, "test", progress=progress) if has_test else None
