"""The search: Ray Tune's Tuner over trials (metadist.tune.trial), a searcher, ASHA, and what comes out of it.

Searcher: Optuna's TPE when optuna is installed (`pip install optuna`), else random search; a space with a `grid`
entry always uses Tune's own generator (Optuna samples, it does not enumerate). ASHA stops the weaker trials at
its rungs, judged on the held-out estimate each trial reports after every evaluation (time axis: outer steps;
the first rung at `train.eval_every`).

Resources: each trial is one placement group that holds all of its job at once (metadist.distributed.resources:
the trial's trainer, then one bundle per task worker; the parameter server sits on the trial's node), so a trial
starts only when its workers fit too, and trials on a small cluster never wait on each other's CPUs.

Storage (default outputs/<job>/tune, absolute): Tune's experiment (`search/`, restorable with `--resume` after
the driver died), each trial's metadist checkpoints (`trials/<id>/checkpoints`), `search.json` (what was searched,
and the search's MLflow run) and, at the end, `best-job.yaml`: the best finished trial's job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from metadist.config import JobConfig, apply_overrides, validate
from metadist.core.runs import absolute
from metadist.distributed import connect
from metadist.distributed.resources import ClusterGPUs, job_bundles
from metadist.errors import ConfigError, MetadistError
from metadist.tune.space import Distribution, SearchSpace, parse_space
from metadist.tune.trial import TrialPlan, run_trial

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "outputs/{name}/tune"
EXPERIMENT_NAME = "search"  # Tune's experiment folder inside the storage
STATE_NAME = "search.json"
BEST_JOB_NAME = "best-job.yaml"
# Tune saves the experiment's state (trial statuses, the searcher) at most this often: what a killed driver can lose.
STATE_SAVE_PERIOD_S = 5
SEARCHERS = ("auto", "optuna", "random")


class TuneError(MetadistError):
    """A search cannot start or resume, or ended with no finished trial."""


@dataclass(frozen=True)
class TuneSettings:
    """How a search runs (`metadist tune` flags)."""

    trials: int = 8  # samples of the space (each grid value gets this many)
    searcher: str = "auto"  # "auto": Optuna when installed, else random
    seed: int | None = None  # the searcher's seed; None = train.seed
    reduction_factor: int = 3  # ASHA keeps the best 1/3 at each rung
    max_concurrent: int | None = None  # None: as many trials at once as the cluster holds
    model_name: str | None = None  # the registered model's name; None = the job's name
    storage: str | None = None  # None = outputs/<job>/tune

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials {self.trials}: at least 1")
        if self.searcher not in SEARCHERS:
            raise ConfigError(f"--searcher {self.searcher!r}: one of {', '.join(SEARCHERS)}")
        if self.reduction_factor < 2:
            raise ConfigError(f"--reduction-factor {self.reduction_factor}: at least 2")


@dataclass
class TrialSummary:
    trial_id: str
    status: str  # "finished", "stopped" (by ASHA), "error"
    settings: dict[str, Any]
    value: float | None  # the objective at its last report (the final evaluation when finished)
    step: int | None
    run_id: str | None
    error: str | None = None


@dataclass
class SearchOutcome:
    storage: str
    metric: str
    mode: str
    searcher: str
    trials: list[TrialSummary] = field(default_factory=list)
    best: TrialSummary | None = None
    best_job_file: str | None = None
    parent_run_id: str | None = None
    registered_model: str | None = None  # "<name>/<version>"
    wall_s: float = 0.0


def default_storage(job: JobConfig) -> str:
    return DEFAULT_STORAGE.format(name=job.name)


def objective(job: JobConfig) -> tuple[str, str, str]:
    """(metric reported to Tune, mode, the evaluation's key behind it): held-out accuracy, or loss for regression."""
    if job.data.kind == "regression":
        return "held_out_loss", "min", "loss_after"
    return "held_out_accuracy", "max", "accuracy_after"


# -- the search --------------------------------------------------------------------------------------------------
def tune_job(job: JobConfig, space: SearchSpace | None, settings: TuneSettings = TuneSettings(), *,
             resume: bool = False, progress: bool = False) -> SearchOutcome:
    """Search `space` around `job`; with `resume`, continue the search kept in the storage folder (its saved job,
    space and settings: `job` only names the folder, `space` may be None)."""
    storage = absolute(settings.storage or default_storage(job))
    state_file = Path(storage) / STATE_NAME
    experiment = str(Path(storage) / EXPERIMENT_NAME)
    if resume:
        if not state_file.is_file():
            raise TuneError(f"{storage}: no search to resume here (no {STATE_NAME}); start one without --resume")
        state = json.loads(state_file.read_text())
        job = validate(JobConfig, state["job"], f"{state_file} (job)")
        space = parse_space(state["space"], job, f"{state_file} (space)")
        settings = TuneSettings(**(state["settings"] | {"storage": storage}))
    else:
        if state_file.exists():
            raise TuneError(f"{storage}: a search already lives here; continue it with --resume, or pass --storage "
                            "for a new one")
        if space is None:
            raise TuneError("a new search needs a search space (--space SPACE.yaml)")
        state = {"job": job.model_dump(mode="json"), "space": space.to_dict(), "settings": asdict(settings)}
    assert space is not None
    metric, mode, estimate_key = objective(job)
    searcher_name = _searcher_name(settings.searcher, space)
    if job.train.eval_every == 0 or job.train.eval_every >= job.train.steps:
        log.warning("train.eval_every = %d: no held-out evaluation during training, so ASHA has nothing to stop "
                    "trials on; every trial runs to the end", job.train.eval_every)

    # Trials keep the working directory of their worker (relative data paths work as in `metadist train`), and Tune
    # saves the search's state often enough that a killed driver loses little. Both read by Tune in this process.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(STATE_SAVE_PERIOD_S))
    from metadist.tracking.parent_runs import end_run, resume_parent_run, start_parent_run

    connection = connect(job.distributed)
    parent = None
    started = time.perf_counter()
    try:
        if job.tracking.enabled:
            if resume and state.get("parent_run_id"):
                parent = resume_parent_run(state["tracking_uri"], state["parent_run_id"])
            else:
                parent = start_parent_run(
                    job.tracking, run_name=f"{job.tracking.run_name or job.name}-tune",
                    params={f"space.{k}": json.dumps(v) for k, v in space.to_dict().items()}
                    | {"tune.trials": str(settings.trials), "tune.searcher": searcher_name, "tune.metric": metric},
                    tags={"metadist.job": job.name, "metadist.tune": "search"},
                    texts={"job.yaml": _yaml(job), "space.yaml": yaml.safe_dump(space.to_dict(), sort_keys=False)},
                )
            state |= {"parent_run_id": parent.run_id, "tracking_uri": parent.tracking_uri}
        Path(storage).mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state, indent=2) + "\n")
        plan = TrialPlan(
            job=job.model_dump(mode="json"), space=space, metric=metric, estimate_key=estimate_key,
            trials_dir=str(Path(storage) / "trials"), tracking_uri=parent.tracking_uri if parent else None,
            parent_run_id=parent.run_id if parent else None,
        )
        trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), _resources(job, space))
        callbacks: list[tune.Callback] = [_ChildRuns(parent.tracking_uri)] if parent else []
        if resume and tune.Tuner.can_restore(experiment):
            tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=False)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=_param_space(space),
                tune_config=tune.TuneConfig(
                    metric=metric, mode=mode, num_samples=settings.trials,
                    search_alg=_searcher(searcher_name, metric, mode, settings.seed if settings.seed is not None else job.train.seed),
                    scheduler=_asha(job, metric, mode, settings.reduction_factor),
                    max_concurrent_trials=settings.max_concurrent,
                    # A trial takes over the warm process of an ended one with the same resources (metadist.tune.trial)
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=EXPERIMENT_NAME, storage_path=storage, callbacks=callbacks, verbose=1 if progress else 0,
                    # A failed trial is reported, and the others go on. Every marker checkpoint is kept (a few bytes
                    # each): with num_to_keep, Tune would force a save of the whole search's state at each one.
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                ),
            )
        with _environment({} if progress else {"RAY_AIR_NEW_OUTPUT": "0"}):  # verbose=0 silences only the old output
            grid = tuner.fit()
        outcome = _outcome(grid, space, storage, metric, mode, searcher_name, parent.run_id if parent else None)
        if outcome.best is not None:
            best_job = apply_overrides(job, space.overrides(_sampled(grid, outcome.best.trial_id)))
            outcome.best_job_file = str(Path(storage) / BEST_JOB_NAME)
            Path(outcome.best_job_file).write_text(_yaml(best_job))
        outcome.wall_s = time.perf_counter() - started
        if parent is not None:
            _record_on_parent(parent, outcome, job, settings)
    except BaseException as exc:
        if parent is not None:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            try:
                end_run(parent.tracking_uri, parent.run_id, status)
            except MetadistError as exc:  # the search's own error is the one to see
                log.error("could not mark the search's MLflow run %s: %s", status, exc)
        raise
    finally:
        connection.close()
    if outcome.best is None:
        raise TuneError(f"{storage}: no trial finished ({_count(outcome)}); see the errors above and Tune's logs in "
                        f"{experiment}")
    return outcome


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set for the block, then restored."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _record_on_parent(parent, outcome: SearchOutcome, job: JobConfig, settings: TuneSettings) -> None:
    from metadist.tracking.parent_runs import end_run, log_search_summary, register_model

    best = outcome.best
    if best is not None and best.run_id and job.tracking.log_model and job.tracking.register_model:
        name = settings.model_name or job.tracking.registered_model or job.name
        version = register_model(parent.tracking_uri, best.run_id, name, alias=job.tracking.alias)
        outcome.registered_model = f"{name}/{version}"
    metrics = {f"trials_{s}": float(sum(t.status == s for t in outcome.trials)) for s in ("finished", "stopped", "error")}
    if best is not None and best.value is not None:
        metrics[f"best_{outcome.metric}"] = best.value
    metrics["search_wall_s"] = outcome.wall_s
    texts = {BEST_JOB_NAME: Path(outcome.best_job_file).read_text()} if outcome.best_job_file else {}
    log_search_summary(parent, metrics, _summary(outcome), texts)
    tags = {"metadist.tune.best_run_id": best.run_id or ""} if best is not None else {}
    if outcome.registered_model:
        tags["metadist.registered_model"] = outcome.registered_model
    end_run(parent.tracking_uri, parent.run_id, "FINISHED" if best is not None else "FAILED", tags=tags)


# -- Tune's pieces -----------------------------------------------------------------------------------------------
def _param_space(space: SearchSpace) -> dict[str, Any]:
    return {key: _tune_distribution(dist) for key, dist in space.params.items()}


def _tune_distribution(dist: Distribution) -> Any:
    if dist.kind == "uniform":
        return tune.uniform(*dist.values)
    if dist.kind == "loguniform":
        return tune.loguniform(*dist.values)
    if dist.kind == "randint":
        low, high = dist.values
        return tune.randint(low, high + 1)  # Tune's upper end is excluded; the file's is included
    if dist.kind == "choice":
        return tune.choice(dist.options())
    return tune.grid_search(dist.options())


def _searcher_name(asked: str, space: SearchSpace) -> str:
    if space.has_grid:
        if asked == "optuna":
            raise ConfigError(f"{space.where}: --searcher optuna cannot enumerate a grid entry; use choice, or the "
                              "random searcher")
        return "random"
    try:
        import optuna  # noqa: F401
    except ImportError:
        if asked == "optuna":
            raise ConfigError("--searcher optuna: optuna is not installed (pip install optuna)") from None
        return "random"
    return "random" if asked == "random" else "optuna"


def _searcher(name: str, metric: str, mode: str, seed: int) -> Any:
    if name == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=metric, mode=mode, seed=seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed)


def _asha(job: JobConfig, metric: str, mode: str, reduction_factor: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    steps = job.train.steps
    grace = job.train.eval_every if 0 < job.train.eval_every <= steps else steps
    return ASHAScheduler(time_attr="step", metric=None, mode=None, max_t=steps, grace_period=grace,
                         reduction_factor=reduction_factor)


def _resources(job: JobConfig, space: SearchSpace):
    """Each trial's placement group, from its own job (a space may change distributed.workers)."""
    gpus = ClusterGPUs.read()

    def bundles(sampled: dict[str, Any]) -> Any:
        try:
            trial_job = apply_overrides(job, space.overrides(sampled))
        except ConfigError:
            trial_job = job  # the trial fails on the same error, and says so
        return tune.PlacementGroupFactory(job_bundles(trial_job, gpus), strategy="PACK")

    return bundles


class _ChildRuns(tune.Callback):
    """In the driver: ends the MLflow child run of a trial that ASHA stopped (KILLED, tagged) or that died without
    ending it (FAILED); a trial that ran to its end has already ended its own."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.last: dict[str, dict] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.last[trial.trial_id] = {"run_id": result.get("mlflow_run_id"), "final": result.get("final")}

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = self.last.get(trial.trial_id, {})
        if last.get("run_id") and not last.get("final"):
            self._end(last["run_id"], "KILLED", {"metadist.tune.stopped_early": "true"})

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        last = self.last.get(trial.trial_id, {})
        if last.get("run_id"):
            self._end(last["run_id"], "FAILED", {})

    def _end(self, run_id: str, status: str, tags: dict[str, str]) -> None:
        from metadist.tracking.parent_runs import end_run

        try:
            end_run(self.tracking_uri, run_id, status, tags=tags, only_if_running=True)
        except MetadistError as exc:  # the search goes on; the run stays as MLflow has it
            log.error("could not end the MLflow run %s of a trial: %s", run_id, exc)


# -- the outcome -------------------------------------------------------------------------------------------------
def _outcome(grid, space: SearchSpace, storage: str, metric: str, mode: str, searcher: str,
             parent_run_id: str | None) -> SearchOutcome:
    outcome = SearchOutcome(storage=storage, metric=metric, mode=mode, searcher=searcher, parent_run_id=parent_run_id)
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        value = metrics.get(metric)
        if result.error is not None:
            status, error = "error", _first_line(result.error)
        else:
            status, error = ("finished" if metrics.get("final") else "stopped"), None
        outcome.trials.append(TrialSummary(
            trial_id=trial_id, status=status, settings=space.settings(result.config or {}), error=error,
            value=None if value is None or not math.isfinite(value) else float(value),
            step=metrics.get("step"), run_id=metrics.get("mlflow_run_id") or None,
        ))
    finished = [t for t in outcome.trials if t.status == "finished" and t.value is not None]
    if finished:
        pick = max if mode == "max" else min
        outcome.best = pick(finished, key=lambda t: t.value)  # type: ignore[arg-type, return-value]
    return outcome


def _sampled(grid, trial_id: str) -> dict[str, Any]:
    for result in grid:
        if (result.metrics or {}).get("trial_id") == trial_id:
            return result.config
    raise TuneError(f"trial {trial_id}: not among the search's results")


def _first_line(error: BaseException) -> str:
    """The error's own message: its last non-empty line (Ray wraps it in a traceback of the trial)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _count(outcome: SearchOutcome) -> str:
    return ", ".join(f"{sum(t.status == s for t in outcome.trials)} {s}" for s in ("finished", "stopped", "error"))


def _summary(outcome: SearchOutcome) -> dict:
    return {"metric": outcome.metric, "mode": outcome.mode, "searcher": outcome.searcher, "storage": outcome.storage,
            "best": asdict(outcome.best) if outcome.best else None, "best_job_file": outcome.best_job_file,
            "registered_model": outcome.registered_model, "wall_s": outcome.wall_s,
            "trials": [asdict(t) for t in outcome.trials]}


def summary(outcome: SearchOutcome) -> dict:
    """The outcome as JSON-ready data (`metadist tune --json`, search.json on the search's run)."""
    return _summary(outcome)


def _yaml(job: JobConfig) -> str:
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)
