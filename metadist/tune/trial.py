"""One trial: a full metadist job, the base job with the trial's sampled settings, run by the shared Trainer.

The trial reports the held-out estimate to Tune after each evaluation (`train.eval_every`, through the Trainer's
`on_evaluation` hook) and once more at the end with the final evaluation (`train.final_eval_episodes`), which is
what trials are ranked by. Its checkpoints are metadist's own, in a folder of its own under the search's storage;
the Tune checkpoint it reports is only a marker naming that folder, so a trial restored after the driver died (or
retried) resumes from its newest metadist checkpoint, in the same MLflow child run.

A trial that ASHA stops sees Tune's stop request (a SystemExit raised by `tune.report` in its thread) as an
interrupt: the Trainer saves a checkpoint and marks its MLflow run KILLED, as after Ctrl-C.

Trials reuse warm processes (the search runs Tune with `reuse_actors=True`): when a trial ends, Tune keeps its actor,
a Python process that has already imported torch and metadist, for the next trial with the same resources, and
resets it (Ray's function trainable: `reset_config` ends the previous trial's thread, then starts the next). So a
trial must end its thread on its own: a stopped trial leaves with SystemExit(0), Ray's own graceful exit, rather than
returning (after a return, Ray's wrapper reports once more and waits for a go-ahead that never comes). And the wait
for that end is WIND_DOWN_S rather than Tune's default 2 s, because a stopped trial saves its checkpoint, ends its
MLflow run and releases its workers before its thread ends.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from metadist.config import JobConfig, apply_overrides
from metadist.core import checkpoint as ckpt_io
from metadist.training import LocalTrainer, Trainer
from metadist.tune.space import SearchSpace

log = logging.getLogger(__name__)

MARKER_NAME = "metadist-trial.json"  # the Tune checkpoint's one file: where the trial's metadist checkpoints are
# How long a warm process waits for its previous trial to wind down before it takes the next (Tune's
# TUNE_FUNCTION_THREAD_TIMEOUT_S; its own default is 2 s). Past it, Tune gives up the reuse and fails the next trial.
WIND_DOWN_S = 300


class StoppedEarly(KeyboardInterrupt):
    """Tune asked the trial to stop (ASHA): the Trainer saves and ends the run KILLED, as on Ctrl-C."""


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of a search shares, sent once to the trainable (tune.with_parameters)."""

    job: dict[str, Any]  # the base job, as JSON
    space: SearchSpace
    metric: str  # the objective reported to Tune: "held_out_accuracy" (max) or "held_out_loss" (min)
    estimate_key: str  # the evaluation's key behind it: "accuracy_after" or "loss_after"
    trials_dir: str  # absolute; trial T's checkpoints go to <trials_dir>/<T>/checkpoints
    tracking_uri: str | None  # every trial's tracking.uri, resolved once by the driver (None: tracking off)
    parent_run_id: str | None  # the search's MLflow run

    def trial_job(self, sampled: dict[str, Any], trial_id: str) -> JobConfig:
        """The job trial `trial_id` runs: the base job, the sampled settings, and the trial's own checkpoint folder
        and MLflow child run (an explicit, absolute tracking URI: a Ray worker neither sees the driver's
        mlflow.set_tracking_uri nor shares its working directory)."""
        base = JobConfig.model_validate(self.job)
        extra = [f"checkpoint.uri={json.dumps(str(Path(self.trials_dir) / trial_id / 'checkpoints'))}"]
        if base.tracking.enabled and self.tracking_uri is not None:
            extra += [
                f"tracking.uri={json.dumps(self.tracking_uri)}",
                f"tracking.parent_run_id={json.dumps(self.parent_run_id)}",
                f"tracking.run_name={json.dumps(f'{base.tracking.run_name or base.name}-{trial_id}')}",
                "tracking.register_model=false",  # the search registers its best trial's model, not every trial's
            ]
        return apply_overrides(base, self.space.overrides(sampled) + extra)


class ReusedProcess:
    """Mixed into the Tune trainable Ray makes of `run_trial` (its `__mixins__`): the wait for the previous trial's
    thread when the process is reset for the next trial is WIND_DOWN_S, unless TUNE_FUNCTION_THREAD_TIMEOUT_S is set."""

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(WIND_DOWN_S))  # read by Ray's reset_config
        reset: bool = super().reset_config(new_config)  # type: ignore[misc]
        if not reset:
            log.error("the previous trial in this process did not end within %s s; the next trial fails",
                      os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"])
        return reset


def run_trial(config: dict[str, Any], plan: TrialPlan) -> None:
    """The Tune trainable (function API; warm processes are reused, see ReusedProcess)."""
    trial_id = tune.get_context().get_trial_id()
    job = plan.trial_job(config, trial_id)
    # Restored (the driver died, or a retry): continue from the newest metadist checkpoint in the trial's folder.
    resume = bool(ckpt_io.run_checkpoints(job.checkpoint_dir()))
    trainer = _trainer(job, resume)

    def report(step: int, metrics: dict[str, float], final: bool) -> None:
        key = ("test_" if final else "val_") + plan.estimate_key
        result = {plan.metric: metrics[key], "step": step, "final": final, "mlflow_run_id": trainer.run_id or "",
                  "pid": os.getpid(), **metrics}  # pid: which (reused) process ran the trial
        with tempfile.TemporaryDirectory(prefix="metadist-trial-", ignore_cleanup_errors=True) as marker:
            Path(marker, MARKER_NAME).write_text(json.dumps({"checkpoint_dir": job.checkpoint_dir(), "step": step}))
            try:
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(marker))
            except SystemExit as stop:  # Tune's stop request, raised in this (the training) thread
                raise StoppedEarly(f"trial {trial_id} stopped by the scheduler at step {step}") from stop

    trainer.on_evaluation = lambda step, metrics: report(step, metrics, final=False)
    try:
        outcome = trainer.run()
        final = {f"test_{k}": e.mean for k, e in outcome.test.items()} | {"train_time_s": outcome.train_time_s}
        report(outcome.steps, final, final=True)
    except StoppedEarly as stop:
        log.info("%s", stop)
        raise SystemExit(0) from None  # the thread ends here, as after Tune's own stop (not by returning)


run_trial.__mixins__ = (ReusedProcess,)  # type: ignore[attr-defined]  # kept by tune.with_parameters


def _trainer(job: JobConfig, resume: bool) -> Trainer:
    if job.distributed.workers > 0:
        from metadist.distributed import DistributedTrainer

        return DistributedTrainer(job, resume=resume, progress=False)
    return LocalTrainer(job, resume=resume, progress=False)
