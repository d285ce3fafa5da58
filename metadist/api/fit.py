"""`fit`: run a metadist job from Python, exactly as `metadist train` runs it.

    >>> import metadist
    >>> result = metadist.fit("jobs/omniglot-5way-1shot-protonet.yaml", overrides=["train.steps=100"])
    >>> result.test["accuracy_after"]          # held-out accuracy, mean ± 95% CI
    >>> result.checkpoint_uri                  # the run's final checkpoint (metadist eval/predict/serve take it)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from metadist.config import JobConfig, apply_overrides, load_job, validate
from metadist.training import LocalTrainer, Trainer, TrainResult


def resolve_job(job: str | Path | JobConfig | Mapping | None = None, overrides: Sequence[str] = (), *,
                workers: int | None = None, address: str | None = None) -> JobConfig:
    """The job `fit` runs: a job file (any fsspec URI), a JobConfig, a mapping of settings, or None for the embedded
    default; then the `--set`-style overrides, and the `--workers`/`--address` flags' settings."""
    if isinstance(job, JobConfig):
        config = job
    elif isinstance(job, Mapping):
        config = validate(JobConfig, dict(job), "the job mapping")
    else:
        config = load_job(None if job is None else str(job))
    extra = list(overrides)
    if workers is not None:
        extra.append(f"distributed.workers={workers}")
    if address is not None:
        extra.append(f"distributed.address={json.dumps(address)}")
    return apply_overrides(config, extra)


def run_job(job: JobConfig, *, resume: str | bool = False, progress: bool = True) -> TrainResult:
    """Train `job` in this process (`distributed.workers: 0`) or on Ray (task workers and a parameter server)."""
    trainer: Trainer
    if job.distributed.workers > 0:
        from metadist.distributed import DistributedTrainer

        trainer = DistributedTrainer(job, resume=resume, progress=progress)
    else:
        trainer = LocalTrainer(job, resume=resume, progress=progress)
    return trainer.run()


def fit(job: str | Path | JobConfig | Mapping | None = None, *, overrides: Sequence[str] = (), workers: int | None = None,
        address: str | None = None, resume: str | bool = False, progress: bool = True) -> TrainResult:
    """Meta-train a job as `metadist train JOB --set ... --workers N --resume` does, and return its result: the final
    checkpoint, the held-out test estimates, the MLflow run id and the learning curve. Ctrl-C and SIGTERM save a
    checkpoint first, as on the command line. Errors are metadist.errors.MetadistError subclasses naming the file,
    field or address at fault."""
    return run_job(resolve_job(job, overrides, workers=workers, address=address), resume=resume, progress=progress)
