"""The outer loop every trainer shares: `Trainer`, composed of a step source (where outer steps are computed and
applied) and a tracker (where the run is recorded).

The loop reads in the order it runs: take the next outer step from the source (it samples the tasks, computes the
update with the learner's pure step function and applies it with the outer optimizer) → log → evaluate →
checkpoint. Episodes are a function of (seed, step, task index) and checkpoints hold the optimizer state and the
next step, so a resumed run continues exactly where the interrupted one stopped. Each run writes its checkpoints
into a folder of its own, locked while it runs (metadist.core.runs). Ctrl-C and SIGTERM both save a checkpoint and
mark the MLflow run KILLED. A fresh run with `pretrain.epochs` first pre-trains the network on every training class
(metadist.training.pretrain) and starts meta-training from it. Logging, evaluation, checkpoints, time budgets, resume and MLflow are written once, here; `LocalSteps` (this process) and
`metadist.distributed.DistributedSteps` (Ray task workers and a parameter server) are the two step sources.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from metadist.algorithms.base import MetaLearner
from metadist.algorithms.functional import Params
from metadist.algorithms.outer import MetaOptimizer, OuterState, StepResult
from metadist.config import JobConfig, TrainConfig
from metadist.core import checkpoint as ckpt_io
from metadist.core.checkpoint import Checkpoint, LoopState
from metadist.core.runs import RunFolder
from metadist.core.spec import ModelSpec
from metadist.core.tasks import make_sampler, make_test_sampler
from metadist.errors import CheckpointError
from metadist.runtime import sigterm_interrupts
from metadist.training.evaluation import Estimate, evaluate
from metadist.training.pretrain import pretrain
from metadist.training.progress import MetricsWindow, ProgressDisplay

if TYPE_CHECKING:
    from metadist.tracking import Tracker
    from metadist.tracking.system_metrics import SystemMetricsTarget

log = logging.getLogger("metadist.training")

# Settings a resumed run must share with the checkpoint it resumes, or it would not continue the same run. train.steps
# may grow: a resumed run can be extended.
RESUME_MUST_MATCH = ("data", "model", "algorithm", "optimizer", "train.seed", "train.meta_batch")


def is_log_step(steps_taken: int, train: TrainConfig) -> bool:
    """Whether the loop logs after `steps_taken` outer steps (a time budget may also end, and log, a run earlier).
    Step sources ask this to compute before-adaptation metrics only for the steps that are logged."""
    return steps_taken % train.log_every == 0 or steps_taken == train.steps


def resume_mismatches(saved: JobConfig, job: JobConfig) -> list[str]:
    a, b = saved.flat(), job.flat()
    return sorted(k for k in set(a) | set(b) if k.startswith(RESUME_MUST_MATCH) and a.get(k) != b.get(k))


# Called with (step, held-out metrics) after each evaluation during training (Trainer's on_evaluation).
EvaluationHook = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    checkpoint_uri: str  # the final checkpoint
    steps: int  # outer steps taken (sampled), including any skipped update
    applied_steps: int
    skipped_updates: int
    test: dict[str, Estimate]  # final held-out evaluation
    run_id: str | None  # MLflow run
    history: list[dict] = field(default_factory=list)
    stopped_by_time_budget: bool = False
    train_time_s: float = 0.0


@dataclass
class StepOutcome:
    """One outer step as the loop sees it, whoever computed and applied it."""

    metrics: dict[str, float]  # the update's metric sums over its tasks (Update.metrics)
    num_tasks: int
    result: StepResult  # what the outer optimizer did with it
    # Query metrics of the meta-parameters before adaptation (means over tasks): a dict, or a function that
    # computes them, called only on steps that are logged; None when the step source did not compute them.
    before: dict[str, float] | Callable[[], dict[str, float]] | None = None

    def before_metrics(self) -> dict[str, float]:
        return (self.before() if callable(self.before) else self.before) or {}


class StepSource(ABC):
    """Where outer steps come from: it computes and applies them, and holds the outer optimizer (or reaches it).

    `device`, `learner` and `spec` are what the loop evaluates the meta-parameters with.
    """

    job: JobConfig
    device: torch.device
    learner: MetaLearner
    spec: ModelSpec

    @abstractmethod
    def steps(self, start: int) -> Generator[StepOutcome, None, None]:
        """Compute and apply outer steps start, start + 1, ... up to train.steps, yielding one outcome each. The loop
        closes the generator when it stops early (time budget, error), so a `finally` in it releases what it holds."""

    @abstractmethod
    def meta_params(self) -> Params:
        """The current meta-parameters, detached, on self.device."""

    @abstractmethod
    def outer_state(self) -> OuterState:
        """The outer optimizer's state, wherever it lives."""

    @abstractmethod
    def load_outer_state(self, state: OuterState) -> None:
        """Put `state` into the outer optimizer, wherever it lives."""

    @property
    @abstractmethod
    def applied_steps(self) -> int: ...

    @property
    @abstractmethod
    def skipped_updates(self) -> int: ...

    def start(self) -> None:  # noqa: B027 - a hook: the local source acquires nothing
        """Acquire what computing steps needs (workers ...); called once, when the run starts."""

    def close(self) -> None:  # noqa: B027 - a hook: the local source releases nothing
        """Release what `start` acquired; called once, when the run ends, whatever the outcome."""

    def record_system_metrics(self, target: SystemMetricsTarget | None) -> None:  # noqa: B027 - a hook, as `start`
        """Have the processes this source started log their system metrics into the run `target` names (None: the
        run is not tracked); called once the run has started. The local source started none."""

    def save_checkpoint(self, step: int, loop: LoopState, directory: str, keep: int) -> str:
        """Write the run's checkpoint at `step` into `directory`, keep the newest `keep` there; its URI. A source
        whose optimizer lives elsewhere (the parameter server) has it written there instead of fetching its state."""
        ckpt = Checkpoint.of_run(self.job, self.spec, step, self.outer_state(), loop)
        return ckpt_io.save_and_prune(ckpt, directory, keep)

    def log_extras(self) -> dict[str, float]:
        """Metrics of the step source itself (workers, staleness ...), added to every training log line."""
        return {}


class Trainer:
    """The outer loop over a step source. `run()` trains, checkpoints, evaluates and records the run."""

    def __init__(self, job: JobConfig, source: StepSource, *, resume: str | bool = False, progress: bool = True,
                 on_evaluation: EvaluationHook | None = None) -> None:
        """resume: False; True = the newest checkpoint in the job's checkpoint directory; or a checkpoint URI.
        on_evaluation: called with (step, metrics) after each held-out evaluation during training (every
        train.eval_every steps; the metrics as logged, `val_accuracy_after` ...), e.g. to report to a tuner."""
        self.job = job
        self.source = source
        self.progress = progress
        self.on_evaluation = on_evaluation
        self.test_sampler = make_test_sampler(job, progress=progress)
        self.step = 0  # outer steps taken = the next sampler step
        self.loop_state = LoopState()
        self.run_folder = RunFolder.new(job.checkpoint_dir())
        self.restored = bool(resume)  # a resumed run was pre-trained (if at all) before its checkpoint
        if resume:
            self._restore(job.checkpoint_dir() if resume is True else resume)

    # -- what the source holds -------------------------------------------------------------------------------------
    @property
    def learner(self) -> MetaLearner:
        return self.source.learner

    @property
    def history(self) -> list[dict]:
        return self.loop_state.history

    @property
    def run_id(self) -> str | None:
        return self.loop_state.mlflow_run_id

    def meta_params(self) -> Params:
        return self.source.meta_params()

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _restore(self, uri: str) -> None:
        """Continue from `uri` (a checkpoint, a run's folder, or the checkpoint root: its newest run's newest valid
        checkpoint), in that run's folder. From a checkpoint file older than its run's newest, the run forks: a folder
        and an MLflow run of its own, so the newer checkpoints and metric points of the original stay as they are."""
        saved = ckpt_io.load(uri)
        assert saved.uri is not None
        wrong = resume_mismatches(saved.job, self.job)
        if wrong:
            raise CheckpointError(f"{saved.uri}: cannot resume this job from it; these settings differ: {', '.join(wrong)}")
        if self.job.train.steps < saved.step:
            raise CheckpointError(f"{saved.uri}: train.steps={self.job.train.steps} is below the checkpoint's step "
                                  f"{saved.step}; resume with at least {saved.step} steps")
        if self.job.train.steps != saved.job.train.steps and self.job.optimizer.schedule != "constant":
            log.warning("train.steps changed from %d to %d: the %s learning-rate schedule now spans the new length",
                        saved.job.train.steps, self.job.train.steps, self.job.optimizer.schedule)
        self.source.load_outer_state(saved.outer_state())
        self.step = saved.step
        self.loop_state = saved.loop
        folder = RunFolder.of_checkpoint(saved.uri)
        # Given a folder, load picked its newest valid checkpoint: anything newer is damaged, and is overwritten as the
        # run passes its step. Given an older file, the user asked to branch off.
        newer = [step for step, _ in folder.checkpoints() if step > saved.step] if saved.uri == uri else []
        if newer:
            log.warning("%s is older than its run's newest checkpoint (step %d): continuing in a new run folder, %s",
                        saved.uri, max(newer), self.run_folder.uri)
            self.loop_state.mlflow_run_id = None
        else:
            self.run_folder = folder
        log.info("resumed %s at step %d", saved.uri, self.step)

    def save_checkpoint(self) -> str:
        return self.source.save_checkpoint(self.step, self.loop_state, self.run_folder.uri, self.job.checkpoint.keep)

    # -- metrics ---------------------------------------------------------------------------------------------------
    def evaluate(self, episodes: int, progress: bool = False) -> dict[str, Estimate]:
        if self.test_sampler is None:
            return {}
        return evaluate(
            self.learner, self.source.meta_params(), self.test_sampler,
            episodes=episodes, batch_size=self.job.train.meta_batch, device=self.source.device, progress=progress,
            precision=self.job.train.precision,
        )

    # -- the loop ----------------------------------------------------------------------------------------------------
    def run(self, tracker: Tracker | None = None) -> TrainResult:
        job = self.job
        if tracker is None:
            from metadist.tracking import open_tracker

            tracker = open_tracker(job.tracking, job_name=job.name)
        # The folder is taken before anything starts: an unwritable checkpoint location fails now, not at the
        # first save after an hour of training.
        self.run_folder.acquire()
        try:
            with sigterm_interrupts():
                self.source.start()
                tracker.start(job, resume_run_id=self.run_id)
                self.loop_state.mlflow_run_id = tracker.run_id
                self.source.record_system_metrics(tracker.system_metrics_target())
                try:
                    if job.pretrain.epochs and self.step == 0 and not self.restored:
                        self._pretrain(tracker)
                    result = self._loop(tracker)
                except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (metadist.runtime.Terminated)
                    self._save_on_interrupt(type(stop).__name__)
                    _end_quietly(tracker, "KILLED")
                    raise
                except BaseException:
                    _end_quietly(tracker, "FAILED")  # the training error is the one to see, not a tracking one after it
                    raise
                tracker.end("FINISHED")
                return result
        finally:
            try:
                self.source.close()
            finally:
                self.run_folder.release()

    def _save_on_interrupt(self, what: str) -> None:
        try:
            uri = self.save_checkpoint()
        except Exception as exc:  # noqa: BLE001 - the interrupt is what propagates; the failed save is reported
            log.error("%s at step %d: could not save a checkpoint (%s)", what, self.step, exc)
            return
        log.warning("%s at step %d; saved %s (continue with --resume)", what, self.step, uri)

    def _pretrain(self, tracker: Tracker) -> None:
        """Pre-train, and put the result into the outer optimizer as the meta-parameters of step 0 (fresh state)."""
        job, started = self.job, time.perf_counter()

        def record(epoch: int, metrics: dict[str, float]) -> None:
            tracker.log_metrics({f"pretrain_{k}": v for k, v in metrics.items()}, step=epoch)
            if epoch == job.pretrain.epochs:
                log.info("pre-trained %d epochs: loss %.3f, accuracy %.3f on the training classes",
                         epoch, metrics["loss"], metrics["accuracy"])

        sampler = make_sampler(job, "train", progress=self.progress)
        params = pretrain(job, self.source.spec, self.source.meta_params(), sampler, device=self.source.device,
                          progress=self.progress, on_epoch=record)
        fresh = MetaOptimizer.for_learner(self.learner, params, job.optimizer, total_steps=job.train.steps)
        self.source.load_outer_state(fresh.state())
        self.loop_state.elapsed_s += time.perf_counter() - started  # training time: time budgets include it

    def _loop(self, tracker: Tracker) -> TrainResult:
        job, train = self.job, self.job.train
        budget_s = train.time_budget_s
        stopped_by_budget = False
        display = ProgressDisplay(name=job.name, total=train.steps, initial=self.step, enabled=self.progress)
        window = MetricsWindow()
        clock = time.perf_counter()
        steps = self.source.steps(self.step)
        try:
            for outcome in steps:
                self.step += 1
                window.add(outcome.metrics, outcome.num_tasks)
                display.advance()
                now = time.perf_counter()
                self.loop_state.elapsed_s += now - clock  # survives resumes, for time budgets
                clock = now
                stopped_by_budget = budget_s is not None and self.loop_state.elapsed_s >= budget_s
                last = self.step == train.steps or stopped_by_budget

                if is_log_step(self.step, train) or last:
                    metrics = window.close(outcome.result, self.source.skipped_updates)
                    metrics.update(outcome.before_metrics())
                    metrics.update(self.source.log_extras())
                    self._record(tracker, display, metrics, "")

                if train.eval_every and self.step % train.eval_every == 0 and not last:
                    held_out = {f"val_{k}": e.mean for k, e in self.evaluate(train.eval_episodes).items()}
                    if held_out:
                        self._record(tracker, display, held_out, "held-out ")
                        if self.on_evaluation is not None:
                            self.on_evaluation(self.step, held_out)
                    window.restart()  # evaluation time is not training throughput

                if job.checkpoint.every and self.step % job.checkpoint.every == 0 and not last:
                    uri = self.save_checkpoint()
                    if job.tracking.log_checkpoints:
                        tracker.log_checkpoint(uri, step=self.step)
                    window.restart()

                if stopped_by_budget:
                    log.info("time budget of %.0f s reached at step %d", budget_s, self.step)
                    break
        finally:
            steps.close()
            display.close()
        return self._finish(tracker, stopped_by_budget)

    def _finish(self, tracker: Tracker, stopped_by_budget: bool) -> TrainResult:
        job, train = self.job, self.job.train
        final_uri = self.save_checkpoint()
        if job.tracking.log_checkpoints:
            tracker.log_checkpoint(final_uri, step=self.step)
        test = self.evaluate(train.final_eval_episodes, progress=self.progress)
        summary = {f"test_{k}": e.mean for k, e in test.items()} | {f"test_{k}_ci95": e.ci95 for k, e in test.items()}
        skipped = self.source.skipped_updates
        summary.update(train_time_s=self.loop_state.elapsed_s, steps=float(self.step), skipped_updates=float(skipped))
        tracker.log_summary(summary)
        tracker.log_learning_curve(self.history)
        if job.tracking.log_model:
            tracker.log_model(final_uri)
        return TrainResult(
            checkpoint_uri=final_uri, steps=self.step, applied_steps=self.source.applied_steps, skipped_updates=skipped,
            test=test, run_id=self.run_id, history=self.history, stopped_by_time_budget=stopped_by_budget,
            train_time_s=self.loop_state.elapsed_s,
        )

    def _record(self, tracker: Tracker, display: ProgressDisplay, metrics: dict[str, float], label: str) -> None:
        tracker.log_metrics(metrics, step=self.step)
        self.history.append({"step": self.step, **metrics})
        display.show(self.step, metrics, label)


def _end_quietly(tracker: Tracker, status: str) -> None:
    try:
        tracker.end(status)
    except Exception as exc:  # noqa: BLE001 - reported, then the original error propagates
        log.error("could not mark the MLflow run %s: %s", status, exc)
