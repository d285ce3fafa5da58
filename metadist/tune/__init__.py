"""Hyperparameter search over a job's settings on Ray Tune (the search space, the trial, the searcher with ASHA, and the best trial's job and registered model).

Besides metadist.distributed and metadist.submission, the only package that imports Ray: the trials are full
metadist jobs run by the shared Trainer, each in Tune's placement group.

>>> from metadist.tune import load_space, tune_job
>>> outcome = tune_job(job, load_space("space.yaml", job), trials=16)
>>> outcome.best_job_file                      # the best trial's job, ready for `metadist train`
"""

from metadist.tune.search import SearchOutcome, TuneSettings, default_storage, tune_job
from metadist.tune.space import Distribution, SearchSpace, load_space, parse_space

__all__ = ["Distribution", "SearchOutcome", "SearchSpace", "TuneSettings", "default_storage", "load_space", "parse_space",
           "tune_job"]
