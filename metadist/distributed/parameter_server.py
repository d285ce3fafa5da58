"""The parameter server: a Ray actor that holds the meta-parameters and the outer optimizer, and nothing else.

It sums the updates of one outer step in the order it is given them (slice order, so the sum is the same whoever
computed the slices), hands the mean to its MetaOptimizer — the same class the local trainer holds — and
publishes the new parameters to the object store once (`ray.put`), as version v + 1. Workers fetch a version at
most once. Checkpoints are written here, through fsspec, in the local trainer's format.

Exactly once: every apply names its outer step; a step already applied (a driver that retried after losing a
reply) is answered from the record, never applied again.

Its system metrics go into the driver's MLflow run as system/parameter-server/... (see metadist.tracking.system_metrics).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray

from metadist.algorithms.functional import tensor_bytes
from metadist.algorithms.outer import MetaOptimizer, OuterState
from metadist.config import JobConfig
from metadist.core import Checkpoint, LoopState, ModelSpec, build
from metadist.core.checkpoint import load as load_checkpoint
from metadist.core.checkpoint import save_and_prune
from metadist.distributed.flat import FlatUpdate, ParamLayout, sum_in_order
from metadist.runtime import configure_process
from metadist.tracking.system_metrics import NodeMonitor, SystemMetricsTarget

NODE_ID = "parameter-server"  # its system metrics: system/parameter-server/...


@dataclass(frozen=True)
class ParamsVersion:
    """A published version of the meta-parameters: `box` holds its object-store reference (a list, so that
    passing it to a worker hands over the reference instead of making Ray resolve it)."""

    version: int
    box: list
    nbytes: int


@dataclass(frozen=True)
class ApplyReport:
    step: int
    applied: bool  # False: the update held NaN/Inf and was skipped (counted), or the step was already applied
    duplicate: bool  # the step had been applied before; nothing changed
    lr: float
    update_norm: float
    params: ParamsVersion  # the version to compute the next steps on
    step_count: int  # outer steps applied so far
    skipped: int  # updates refused for NaN/Inf so far
    apply_s: float  # sum + optimizer step + publish, inside the server
    received_bytes: int  # update tensors this apply took in


class AppliedSteps:
    """The outer steps applied so far, as a watermark (every step below it applied) plus the ones above it."""

    def __init__(self, below: int = 0) -> None:
        self.below = below
        self.above: set[int] = set()

    def __contains__(self, step: int) -> bool:
        return step < self.below or step in self.above

    def add(self, step: int) -> None:
        self.above.add(step)
        while self.below in self.above:
            self.above.remove(self.below)
            self.below += 1


class ParameterServer:
    def __init__(self, job: JobConfig, spec: dict) -> None:
        configure_process(threads=1)  # the outer step is a few element-wise tensor operations
        self.job = job
        self.spec = ModelSpec.from_dict(spec)
        _, learner = build(job, self.spec)  # the same seeded initialisation as the local trainer
        initial = learner.init_meta_params()
        self.layout = ParamLayout.of(initial)
        self.optimizer = MetaOptimizer.for_learner(learner, initial, job.optimizer, total_steps=job.train.steps)
        self.applied = AppliedSteps()
        self.version = 0
        self.monitor = NodeMonitor(NODE_ID)
        self._publish()

    def _publish(self) -> None:
        params = self.optimizer.meta_params()
        self._current = ParamsVersion(self.version, [ray.put(params)], tensor_bytes(params))

    def current(self) -> ParamsVersion:
        return self._current

    def start_system_metrics(self, target: SystemMetricsTarget | None) -> None:
        self.monitor.start(target)

    def stop_system_metrics(self) -> None:
        self.monitor.stop()

    def apply(self, step: int, weight: float, *parts: FlatUpdate) -> ApplyReport:
        """Sum `parts` (slice updates, or reducers' partial sums) in the order given, apply the mean as outer step
        `step` with its step scaled by `weight` (1, or less for a stale asynchronous update), publish the result."""
        start = time.perf_counter()
        if step in self.applied:
            return self._report(step, False, True, self.optimizer.lr_at(self.optimizer.step_count), float("nan"), 0.0, 0)
        total = sum_in_order(parts).to_update(self.layout)
        result = self.optimizer.apply(total, step_scale=weight)
        self.applied.add(step)
        if result.applied:  # a skipped (NaN/Inf) update changed nothing: the same version stays current
            self.version += 1
            self._publish()
        received = sum(p.nbytes for p in parts)
        return self._report(step, result.applied, False, result.lr, result.update_norm, time.perf_counter() - start, received)

    def _report(self, step, applied, duplicate, lr, norm, apply_s, received) -> ApplyReport:
        return ApplyReport(step, applied, duplicate, lr, norm, self._current, self.optimizer.step_count, self.optimizer.skipped,
                           apply_s, received)

    # -- state -------------------------------------------------------------------------------------------------------
    def counts(self) -> tuple[int, int]:
        """Outer steps applied and updates skipped so far (without shipping the state itself)."""
        return self.optimizer.step_count, self.optimizer.skipped

    def state(self) -> OuterState:
        return self.optimizer.state()

    def load_state(self, state: OuterState) -> ParamsVersion:
        """Restore from a checkpoint's state; the steps it took count as applied (a synchronous run's)."""
        self.optimizer.load_state(state)
        self.applied = AppliedSteps(state.next_step)
        self.version += 1
        self._publish()
        return self._current

    def restore(self, uri: str) -> tuple[ParamsVersion, int]:
        """Load the outer state of the checkpoint at `uri` (a restart within the run); the version to compute on, and
        the step the checkpoint was taken at."""
        saved = load_checkpoint(uri)
        return self.load_state(saved.outer_state()), saved.step

    def save(self, step: int, loop: LoopState, directory: str) -> str:
        """Write the checkpoint of outer step `step` into `directory` (any fsspec URI; the driver makes a local
        path absolute, since this actor's working directory is not the driver's); returns its URI."""
        ckpt = Checkpoint.of_run(self.job, self.spec, step, self.optimizer.state(), loop)
        return save_and_prune(ckpt, directory, self.job.checkpoint.keep)
