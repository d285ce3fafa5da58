"""The single-process step source and trainer: `metadist train JOB.yaml` on one machine.

Each step: sample the meta-batch (prefetched two steps ahead), compute its update in one vmapped call of the
learner's pure step function, apply it with the outer optimizer: the same function a distributed worker runs and
the same optimizer the parameter server holds.
"""

from __future__ import annotations

import functools
from collections.abc import Generator

from metadist.algorithms.functional import Params
from metadist.algorithms.outer import MetaOptimizer, OuterState
from metadist.config import JobConfig
from metadist.core.spec import autocast, build, model_spec, resolve_device, warn_if_slow_precision
from metadist.core.tasks import make_sampler, task_indices
from metadist.data import Prefetcher
from metadist.runtime import configure_process
from metadist.training.loop import StepOutcome, StepSource, Trainer


class LocalSteps(StepSource):
    """Every outer step in this process."""

    def __init__(self, job: JobConfig, *, progress: bool = True) -> None:
        configure_process(job.train.threads, job.retains_freed_memory())
        self.job = job
        self.device = resolve_device(job.train.device)
        warn_if_slow_precision(job.train.precision, self.device)
        self.train_sampler = make_sampler(job, "train", progress=progress)
        self.spec = model_spec(job, self.train_sampler)
        self.model, self.learner = build(job, self.spec)
        self.model.to(self.device)
        meta_params = {k: v.to(self.device) for k, v in self.learner.init_meta_params().items()}
        self.optimizer = MetaOptimizer.for_learner(self.learner, meta_params, job.optimizer, total_steps=job.train.steps)

    def steps(self, start: int) -> Generator[StepOutcome, None, None]:
        tasks = task_indices(self.job.train.meta_batch)
        batches = Prefetcher(lambda s: self.train_sampler.sample(s, tasks).to(self.device), range(start, self.job.train.steps), depth=2)
        try:
            for batch in batches:
                # A copy, not a view: the optimizer steps its tensors in place, and the 'before' metrics of a logged
                # step are of the parameters this step's update was computed on.
                params = self.optimizer.meta_params()
                with autocast(self.job.train.precision, self.device):
                    update = self.learner.compute_update(params, batch)
                result = self.optimizer.apply(update)
                yield StepOutcome(update.metrics, update.num_tasks, result, before=functools.partial(self._before, params, batch))
        finally:
            batches.close()

    def _before(self, params: Params, batch) -> dict[str, float]:
        """Query metrics of the meta-parameters themselves (no adaptation), means over the batch: the 'before' curve."""
        return {k: v / len(batch) for k, v in self.learner.before_adaptation_sums(params, batch).items()}

    def meta_params(self) -> Params:
        return self.optimizer.meta_params()

    def outer_state(self) -> OuterState:
        return self.optimizer.state()

    def load_outer_state(self, state: OuterState) -> None:
        self.optimizer.load_state(state)

    @property
    def applied_steps(self) -> int:
        return self.optimizer.step_count

    @property
    def skipped_updates(self) -> int:
        return self.optimizer.skipped


class LocalTrainer(Trainer):
    """`Trainer` over `LocalSteps`: the whole run in this process.

    >>> result = LocalTrainer(job).run()          # or .run(tracker) with a tracker of your own
    """

    def __init__(self, job: JobConfig, *, resume: str | bool = False, progress: bool = True) -> None:
        super().__init__(job, LocalSteps(job, progress=progress), resume=resume, progress=progress)

    @property
    def optimizer(self) -> MetaOptimizer:
        return self.source.optimizer  # type: ignore[attr-defined]
