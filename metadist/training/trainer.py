"""The outer loop every trainer shares, and the single-process trainer: `metadist train JOB.yaml` on one machine.

The loop reads in the order it runs: sample tasks → compute the update (the learner's pure step function, the
same one a distributed worker runs) → apply it (MetaOptimizer, the same one the parameter server holds) → log →
evaluate → checkpoint. Episodes are a function of (seed, step, task index) and checkpoints hold the optimizer state
and the next step, so a resumed run continues exactly where the interrupted one stopped.

`MetaTrainer` is that loop with the step source left open: `LocalTrainer` computes and applies each step in this
process; `metadist.distributed.DistributedTrainer` has Ray task workers compute it and a parameter-server actor
apply it. Logging, evaluation, checkpoints, time budgets, resume and MLflow are written once, here.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch.func import vmap
from tqdm.auto import tqdm

from metadist.algorithms.functional import Params
from metadist.algorithms.outer import MetaOptimizer, StepResult
from metadist.config import JobConfig
from metadist.data import Prefetcher
from metadist.errors import CheckpointError
from metadist.training import checkpoint as ckpt_io
from metadist.training.evaluation import Estimate, evaluate
from metadist.training.tasks import build, make_sampler, model_spec, resolve_device, task_indices

log = logging.getLogger(__name__)

# Settings a resumed run must share with the checkpoint it resumes, or it would not continue the same run.
RESUME_MUST_MATCH = ("data", "model", "algorithm", "optimizer", "train.seed", "train.meta_batch", "train.steps")


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


def checkpoint_dir(job: JobConfig) -> str:
    return job.checkpoint.uri or f"outputs/{job.name}/checkpoints"


def resume_mismatches(saved: JobConfig, job: JobConfig) -> list[str]:
    a, b = saved.flat(), job.flat()
    return sorted(k for k in set(a) | set(b) if k.startswith(RESUME_MUST_MATCH) and a.get(k) != b.get(k))


@dataclass
class StepOutcome:
    """One outer step as the shared loop sees it, whoever computed and applied it."""

    metrics: dict[str, float]  # the update's metric sums over its tasks (Update.metrics)
    num_tasks: int
    result: StepResult  # what the outer optimizer did with it
    # Query metrics of the meta-parameters before adaptation (means over tasks): a dict, or a function that
    # computes them, called only on steps that are logged; None when the step source did not compute them.
    before: dict[str, float] | Callable[[], dict[str, float]] | None = None


def before_adaptation_sums(learner, params: Params, batch) -> dict[str, float]:
    """Query loss (and accuracy) of the meta-parameters themselves, no adaptation, summed over the batch's tasks:
    the 'before' curve. Sums, like Update.metrics, so the figures of several workers' slices add up."""
    if not learner.adapts_weights:
        return {}
    with torch.no_grad():
        out = vmap(learner.forward, in_dims=(None, 0))(learner.model_params(params), batch.query_x)
        metrics = learner._per_task_metrics(out, batch.query_y, "before")
    return {k: float(v.sum()) for k, v in metrics.items()}


def make_checkpoint(job: JobConfig, spec, step: int, optimizer_state: dict, fixed_lr: float | None, trainer_state: dict) -> ckpt_io.Checkpoint:
    """The checkpoint of a run: the outer optimizer's state (MetaOptimizer.state_dict) and the loop's state.

    The local trainer and the parameter server both write through this, so either's checkpoints resume the other.
    """
    return ckpt_io.Checkpoint(
        job=job,
        model_spec=spec,
        step=step,
        meta_params=optimizer_state["params"],
        optimizer=optimizer_state["optimizer"] if fixed_lr is None else None,
        trainer={"applied_steps": optimizer_state["step_count"], "skipped_updates": optimizer_state["skipped"], **trainer_state},
    )


def save_checkpoint_files(ckpt: ckpt_io.Checkpoint, directory: str, keep: int) -> str:
    """Write `ckpt` into `directory` (any fsspec URI), keep the newest `keep` there; returns its URI."""
    uri = ckpt_io.save(ckpt, directory)
    ckpt_io.prune(directory, keep)
    return uri


class MetaTrainer(ABC):
    """The outer loop, with the source of outer steps left to subclasses.

    A subclass sets, in its __init__: job, progress, device, learner, spec, test_sampler; and implements
    `_outer_steps` (compute and apply the steps from `self.step` on), `meta_params`, `_optimizer_state`,
    `_load_optimizer_state`, `applied_steps` and `skipped_updates`. It may override `save_checkpoint` (the
    parameter server writes the distributed trainer's) and `_log_extras` (more metrics on every log line).
    """

    job: JobConfig
    progress: bool
    device: torch.device
    learner: object
    spec: object
    test_sampler: object

    def _init_loop_state(self) -> None:
        self.step = 0  # outer steps taken = the next sampler step
        self.history: list[dict] = []
        self.elapsed_s = 0.0  # training time of earlier sessions of this run
        self.run_id: str | None = None
        self._clock = time.perf_counter()

    # -- what a step source provides -------------------------------------------------------------------------------
    @abstractmethod
    def _outer_steps(self) -> Iterator[StepOutcome]:
        """Compute and apply outer steps self.step, self.step + 1, ... up to train.steps, yielding one outcome each.

        The loop advances self.step after each outcome and closes the generator when it stops early (time budget,
        error), so a `finally` in it releases what it holds.
        """

    @abstractmethod
    def meta_params(self) -> Params:
        """The current meta-parameters, detached, on self.device."""

    @abstractmethod
    def _optimizer_state(self) -> dict:
        """MetaOptimizer.state_dict() of the outer optimizer, wherever it lives."""

    @abstractmethod
    def _load_optimizer_state(self, state: dict) -> None:
        """MetaOptimizer.load_state_dict(state) on the outer optimizer, wherever it lives."""

    @property
    @abstractmethod
    def applied_steps(self) -> int: ...

    @property
    @abstractmethod
    def skipped_updates(self) -> int: ...

    @property
    def fixed_lr(self) -> float | None:
        return getattr(self.learner, "fixed_outer_lr", None)

    def _log_extras(self) -> dict[str, float]:
        """Metrics of the step source itself (workers, staleness ...), added to every training log line."""
        return {}

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _restore(self, uri: str) -> None:
        saved = ckpt_io.load(uri)
        wrong = resume_mismatches(saved.job, self.job)
        if wrong:
            raise CheckpointError(f"{uri}: cannot resume this job from it; these settings differ: {', '.join(wrong)}")
        state = saved.trainer
        self._load_optimizer_state(
            {"params": saved.meta_params, "optimizer": saved.optimizer, "step_count": state["applied_steps"], "skipped": state["skipped_updates"]}
        )
        self.step = saved.step
        self.history = state.get("history", [])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        self.run_id = state.get("mlflow_run_id")
        log.info("resumed %s at step %d", uri, self.step)

    def _trainer_state(self) -> dict:
        """The loop's part of a checkpoint (JSON); the optimizer's part comes from wherever it lives."""
        return {
            # Episodes are f(seed, step, task), so the sampler's whole state is its seed and the next step.
            "sampler": {"seed": self.job.train.seed, "next_step": self.step},
            "elapsed_s": self.elapsed_s,
            "mlflow_run_id": self.run_id,
            "history": self.history,
        }

    def _checkpoint(self) -> ckpt_io.Checkpoint:
        return make_checkpoint(self.job, self.spec, self.step, self._optimizer_state(), self.fixed_lr, self._trainer_state())

    def save_checkpoint(self) -> str:
        return save_checkpoint_files(self._checkpoint(), checkpoint_dir(self.job), self.job.checkpoint.keep)

    # -- metrics ---------------------------------------------------------------------------------------------------
    def evaluate(self, episodes: int, progress: bool = False) -> dict[str, Estimate]:
        if self.test_sampler is None:
            return {}
        return evaluate(
            self.learner, self.meta_params(), self.test_sampler,
            episodes=episodes, batch_size=self.job.train.meta_batch, device=self.device, progress=progress,
        )

    # -- the loop ----------------------------------------------------------------------------------------------------
    def run(self, tracker=None) -> TrainResult:
        job = self.job
        if tracker is None:
            from metadist.tracking import open_tracker

            tracker = open_tracker(job.tracking, job_name=job.name)
        tracker.start(job, resume_run_id=self.run_id)
        self.run_id = tracker.run_id
        try:
            result = self._loop(tracker)
        except KeyboardInterrupt:
            log.warning("interrupted at step %d; saved %s (resume with --resume)", self.step, self.save_checkpoint())
            _end_quietly(tracker, "KILLED")
            raise
        except BaseException:
            _end_quietly(tracker, "FAILED")  # the training error is the one to see, not a tracking one after it
            raise
        tracker.end("FINISHED")
        return result

    def _loop(self, tracker) -> TrainResult:
        job, train = self.job, self.job.train
        budget_s = train.time_budget_s
        stopped_by_budget = False
        bar = tqdm(total=train.steps, initial=self.step, desc=job.name, unit="step", disable=not self.progress, dynamic_ncols=True)
        self._shown: dict[str, str] = {}
        window = _Window()
        self._clock = time.perf_counter()
        steps = self._outer_steps()
        try:
            for outcome in steps:
                self.step += 1
                window.add(outcome.metrics, outcome.num_tasks)
                bar.update(1)
                self._fold_time()
                stopped_by_budget = budget_s is not None and self.elapsed_s >= budget_s
                last = self.step == train.steps or stopped_by_budget

                if self.step % train.log_every == 0 or last:
                    metrics = window.close(outcome.result, self.skipped_updates)
                    before = outcome.before() if callable(outcome.before) else outcome.before
                    metrics.update(before or {})
                    metrics.update(self._log_extras())
                    self._record(tracker, bar, metrics, "")

                if train.eval_every and self.step % train.eval_every == 0 and not last:
                    held_out = {f"val_{k}": e.mean for k, e in self.evaluate(train.eval_episodes).items()}
                    if held_out:
                        self._record(tracker, bar, held_out, "held-out ")
                    window.restart()  # evaluation time is not training throughput

                if job.checkpoint.every and self.step % job.checkpoint.every == 0 and not last:
                    uri = self.save_checkpoint()
                    if job.tracking.log_checkpoints:
                        tracker.log_checkpoint(_local_path(uri), step=self.step)
                    window.restart()

                if stopped_by_budget:
                    log.info("time budget of %.0f s reached at step %d", budget_s, self.step)
                    break
        finally:
            steps.close()
            bar.close()
        final_uri = self.save_checkpoint()
        if job.tracking.log_checkpoints:
            tracker.log_checkpoint(_local_path(final_uri), step=self.step)
        test = self.evaluate(train.final_eval_episodes, progress=self.progress)
        summary = {f"test_{k}": e.mean for k, e in test.items()} | {f"test_{k}_ci95": e.ci95 for k, e in test.items()}
        summary.update(train_time_s=self.elapsed_s, steps=float(self.step), skipped_updates=float(self.skipped_updates))
        tracker.log_summary(summary)
        tracker.log_learning_curve(self.history)
        if job.tracking.log_model:
            tracker.log_model(_local_path(final_uri))
        return TrainResult(
            checkpoint_uri=final_uri, steps=self.step, applied_steps=self.applied_steps,
            skipped_updates=self.skipped_updates, test=test, run_id=self.run_id, history=self.history,
            stopped_by_time_budget=stopped_by_budget, train_time_s=self.elapsed_s,
        )

    def _record(self, tracker, bar, metrics: dict[str, float], label: str) -> None:
        tracker.log_metrics(metrics, step=self.step)
        self.history.append({"step": self.step, **metrics})
        # Held-out figures join the training ones on the bar until the next training line replaces them all.
        self._shown = {**self._shown, **_postfix(metrics)} if label else _postfix(metrics)
        bar.set_postfix(self._shown, refresh=False)
        if not self.progress:  # logs stand in for the bar (batch jobs, `ray job logs`)
            log.info("step %d/%d %s%s", self.step, self.job.train.steps, label, _line(metrics))

    def _fold_time(self) -> None:
        """Add the wall time since the last call to elapsed_s (which survives resumes, for time budgets)."""
        now = time.perf_counter()
        self.elapsed_s += now - self._clock
        self._clock = now


class LocalTrainer(MetaTrainer):
    """Every step in this process: sample the meta-batch, compute its update in one vmapped call, apply it."""

    def __init__(self, job: JobConfig, *, resume: str | bool = False, progress: bool = True) -> None:
        """resume: False; True = the newest checkpoint in the job's checkpoint directory; or a checkpoint URI."""
        self.job = job
        self.progress = progress
        if job.train.threads:
            torch.set_num_threads(job.train.threads)
        self.device = resolve_device(job.train.device)
        self.train_sampler = make_sampler(job, "train", progress=progress)
        has_test = job.data.regression is not None or job.data.test is not None
        self.test_sampler = make_sampler(job, "test", progress=progress) if has_test else None
        self.spec = model_spec(job, self.train_sampler)
        self.model, self.learner = build(job, self.spec)
        self.model.to(self.device)
        meta_params = {k: v.to(self.device) for k, v in self.learner.init_meta_params().items()}
        self.optimizer = MetaOptimizer(
            meta_params, job.optimizer, total_steps=job.train.steps, fixed_lr=getattr(self.learner, "fixed_outer_lr", None)
        )
        self._init_loop_state()
        if resume:
            self._restore(checkpoint_dir(job) if resume is True else resume)

    def _outer_steps(self) -> Iterator[StepOutcome]:
        tasks = task_indices(self.job.train.meta_batch)
        batches = Prefetcher(lambda s: self.train_sampler.sample(s, tasks).to(self.device), range(self.step, self.job.train.steps), depth=2)
        try:
            for batch in batches:
                # A copy, not a view: the optimizer steps its tensors in place, and the 'before' metrics of a logged
                # step are of the parameters this step's update was computed on.
                params = self.optimizer.meta_params()
                update = self.learner.compute_update(params, batch)
                result = self.optimizer.apply(update)
                yield StepOutcome(update.metrics, update.num_tasks, result, before=lambda p=params, b=batch: self._before_adaptation(p, b))
        finally:
            batches.close()

    def _before_adaptation(self, params: Params, batch) -> dict[str, float]:
        """Query metrics of the meta-parameters themselves (no adaptation): the 'before' curve."""
        return {k: v / len(batch) for k, v in before_adaptation_sums(self.learner, params, batch).items()}

    def meta_params(self) -> Params:
        return self.optimizer.meta_params()

    def _optimizer_state(self) -> dict:
        return self.optimizer.state_dict()

    def _load_optimizer_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    @property
    def fixed_lr(self) -> float | None:
        return self.optimizer.fixed_lr

    @property
    def applied_steps(self) -> int:
        return self.optimizer.step_count

    @property
    def skipped_updates(self) -> int:
        return self.optimizer.skipped


def _postfix(metrics: dict) -> dict[str, str]:
    short = {"loss_after": "loss", "accuracy_after": "acc", "val_accuracy_after": "val_acc", "val_loss_after": "val_loss", "tasks_per_s": "tasks/s"}
    return {name: f"{metrics[k]:.3g}" for k, name in short.items() if k in metrics}


class _Window:
    """Training metrics averaged over the steps since the last log line, and the throughput over them."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.restart()

    def restart(self) -> None:
        """Start timing afresh (after an evaluation or a checkpoint), keeping the metric sums."""
        self.tasks, self.start = 0, time.perf_counter()

    def add(self, metric_sums: dict[str, float], num_tasks: int) -> None:
        self.steps += 1
        self.tasks += num_tasks
        for k, v in metric_sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v / num_tasks

    def close(self, result: StepResult, skipped_updates: int) -> dict[str, float]:
        now = time.perf_counter()
        metrics = {k: v / self.steps for k, v in self.sums.items()}
        metrics.update(
            tasks_per_s=self.tasks / max(now - self.start, 1e-9),
            lr=result.lr,
            update_norm=result.update_norm,
            skipped_updates=float(skipped_updates),
        )
        self.sums, self.steps = {}, 0
        self.restart()
        return metrics


def _end_quietly(tracker, status: str) -> None:
    try:
        tracker.end(status)
    except Exception as exc:  # noqa: BLE001 - reported, then the original error propagates
        log.error("could not mark the MLflow run %s: %s", status, exc)


def _line(metrics: dict) -> str:
    return " ".join(f"{name} {value}" for name, value in _postfix(metrics).items())


def _local_path(uri: str) -> str:
    """MLflow uploads from a local path; checkpoints on remote storage are fetched to a temporary file first."""
    import tempfile

    from fsspec.implementations.local import LocalFileSystem

    from metadist.data.uri import filesystem

    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        return path

    local = tempfile.mkdtemp(prefix="metadist-ckpt-") + "/" + uri.rsplit("/", 1)[-1]
    fs.get(path, local)
    return local
