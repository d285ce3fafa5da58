"""`metadist tune`: search a job's settings on Ray Tune (metadist.tune), and print the trials and the best one."""

from __future__ import annotations

import json
import sys


def add_commands(commands) -> None:
    tune = commands.add_parser(
        "tune", help="search a job's settings with Ray Tune (Optuna or random search, ASHA early stopping); each trial a "
        "full job, the best one written out as a job file and its model registered in MLflow")
    tune.add_argument("job", nargs="?", help="job file (YAML, any fsspec URI); no JOB: the embedded default")
    tune.add_argument("--space", metavar="SPACE.yaml",
                      help="search space: dotted setting → {uniform|loguniform|randint: [low, high]} or "
                      "{choice|grid: [values]} (see docs/tuning.md); not needed with --resume")
    tune.add_argument("--trials", type=int, default=8, metavar="N", help="trials sampled (default 8; a grid: N per value)")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a setting of the base job, e.g. --set train.steps=200 (repeatable)")
    tune.add_argument("--workers", type=int, metavar="N",
                      help="each trial trains on N Ray task workers (sets distributed.workers; default: in the trial's "
                      "own process); its workers and parameter server are reserved with it in one placement group")
    tune.add_argument("--address", metavar="ADDRESS",
                      help="Ray cluster to run the trials on (sets distributed.address; default $RAY_ADDRESS, else a "
                      "local Ray started in this process)")
    tune.add_argument("--storage", metavar="DIR",
                      help="where the search lives: Tune's state, the trials' checkpoints, best-job.yaml "
                      "(default outputs/<job name>/tune)")
    tune.add_argument("--resume", action="store_true",
                      help="continue the search kept in the storage folder (after its driver died): finished trials "
                      "are kept, unfinished ones resume from their newest checkpoint")
    tune.add_argument("--searcher", choices=("auto", "optuna", "random"), default="auto",
                      help="auto (default): Optuna's TPE when optuna is installed, else random")
    tune.add_argument("--seed", type=int, help="the searcher's seed (default: train.seed)")
    tune.add_argument("--reduction-factor", type=int, default=3, metavar="R",
                      help="ASHA keeps the best 1/R of the trials at each rung (default 3)")
    tune.add_argument("--max-concurrent", type=int, metavar="N", help="at most N trials at once (default: as fit)")
    tune.add_argument("--model-name", metavar="NAME",
                      help="registered model that the best trial's model becomes a version of (default: the job name)")
    tune.add_argument("--json", action="store_true", help="print the outcome as JSON")
    tune.add_argument("--no-progress", action="store_true", help="no Tune progress table")
    tune.set_defaults(handler=_tune)


def _tune(args) -> int:
    from metadist.api import resolve_job
    from metadist.errors import ConfigError
    from metadist.tune import TuneSettings, load_space, tune_job
    from metadist.tune.search import summary

    job = resolve_job(args.job, args.overrides, workers=args.workers, address=args.address)
    if args.space is None and not args.resume:
        raise ConfigError("metadist tune: --space SPACE.yaml is required (except with --resume)")
    space = load_space(args.space, job) if args.space and not args.resume else None
    settings = TuneSettings(
        trials=args.trials, searcher=args.searcher, seed=args.seed, reduction_factor=args.reduction_factor,
        max_concurrent=args.max_concurrent, model_name=args.model_name, storage=args.storage,
    )
    outcome = tune_job(job, space, settings, resume=args.resume, progress=not args.no_progress)
    if args.json:
        print(json.dumps(summary(outcome), indent=2, default=str))
        return 0
    print(f"search: {outcome.storage} ({outcome.searcher} search, ASHA on {outcome.metric}, {outcome.wall_s:.0f} s)")
    for trial in sorted(outcome.trials, key=lambda t: t.trial_id):
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        settings_text = " ".join(f"{k}={json.dumps(v)}" for k, v in trial.settings.items())
        line = f"  {trial.trial_id}  {trial.status:8s}  step {trial.step if trial.step is not None else '-'}  {value}  {settings_text}"
        print(line)
        if trial.error:
            print(f"  {trial.trial_id}  error: {trial.error}", file=sys.stderr)
    assert outcome.best is not None  # tune_job raises when no trial finished
    print(f"best: {outcome.best.trial_id} {outcome.metric} = {outcome.best.value:.4f}")
    print(f"best job: {outcome.best_job_file}")
    if outcome.parent_run_id:
        print(f"mlflow run: {outcome.parent_run_id}")
    if outcome.registered_model:
        print(f"registered model: {outcome.registered_model}")
    return 0
