"""Tune overhead: the wall time of a 16-trial ASHA search on the tiny job against the sum of its trials run alone.

Run (a few minutes on 2 cores):

    .venv/bin/python bench/tune_overhead.py

The search is `metadist tune` (tracking off, one trial at a time, random or Optuna search as installed) on the tiny
job (conv-4 with 8 filters, --steps outer steps of 4 tasks, an evaluation every --eval-every steps); then every
trial is trained again alone, for the steps it ran in the search, twice: in this process, one after the other (the
target's baseline: overhead = search wall time / sum of the trials alone − 1, target ≤ 15 %), and each as its own
`metadist train` process, as a user would run it alone (process start and imports included; a second, labelled
figure, not the target's). Also measured: starting and stopping a local Ray alone, and how many worker processes the
search's trials ran in (Tune reuses a warm one for the next trial).

Output: a table on stdout, bench/results/tune_overhead.json and the section "## Tune: overhead of a search over its
trials" of docs/benchmarks.md (its text is docs/templates/tune_overhead.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common.docs import render, template_heading
from common.results import add_output_arguments, machine_info, publish, results_path

RESULTS_PATH = results_path("tune_overhead")
DOC_SECTION = template_heading("tune_overhead")
COMMAND = ".venv/bin/python bench/tune_overhead.py"
TARGET_PCT = 15.0
SPACE = {"algorithm.inner_lr": {"loguniform": [0.1, 0.5]}, "optimizer.lr": {"loguniform": [1.0e-4, 1.0e-2]}}


def tiny_job(steps: int, eval_every: int, root: Path):
    from metadist.config import JobConfig, apply_overrides
    from metadist.data import ensure_bundled

    small1, small2 = ensure_bundled("omniglot-small1", progress=False), ensure_bundled("omniglot-small2", progress=False)
    return apply_overrides(JobConfig(), [
        "name=tiny-tune-bench", f"data.train.uri={small1}", f"data.test.uri={small2}", "data.test.split.groups=[Tagalog]",
        "data.episode.queries=2", "data.test_episode.queries=2", "model.hidden=8", "train.meta_batch=4",
        f"train.steps={steps}", "train.log_every=5", f"train.eval_every={eval_every}", "train.eval_episodes=8",
        "train.final_eval_episodes=8", "train.threads=1", "checkpoint.every=0", f"checkpoint.uri={root / 'ckpt'}",
        "tracking.enabled=false",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=5)
    add_output_arguments(parser, RESULTS_PATH)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from metadist.config import apply_overrides
    from metadist.distributed import connect
    from metadist.training import LocalTrainer
    from metadist.tune import TuneSettings, parse_space, tune_job

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="metadist-tune-bench-") as tmp:
        root = Path(tmp)
        job = tiny_job(args.steps, args.eval_every, root)
        space = parse_space(SPACE, job, "bench space")
        clock = time.perf_counter()
        outcome = tune_job(job, space, TuneSettings(trials=args.trials, max_concurrent=1, storage=str(root / "tune")))
        search_s = time.perf_counter() - clock
        processes = len(_trial_pids(root / "tune" / "search"))
        clock = time.perf_counter()
        connect(job.distributed).close()  # what the search spends starting and stopping its local Ray
        ray_s = time.perf_counter() - clock
        alone = []
        for trial in outcome.trials:
            steps = trial.step if trial.step else args.steps
            sets = [f"{k}={json.dumps(v)}" for k, v in trial.settings.items()]
            trial_job = apply_overrides(job, sets + [f"train.steps={steps}", f"checkpoint.uri={root / 'alone' / trial.trial_id}"])
            clock = time.perf_counter()
            LocalTrainer(trial_job, progress=False).run()
            alone.append({"trial": trial.trial_id, "status": trial.status, "steps": steps, "wall_s": time.perf_counter() - clock})
            print(f"{trial.trial_id} {trial.status:8s} {steps:3d} steps alone: {alone[-1]['wall_s']:.2f} s", file=sys.stderr)
        for trial, entry in zip(outcome.trials, alone, strict=True):
            # The same job as a user runs it alone: `metadist train` in a new process (its own checkpoint folder).
            trial_job = apply_overrides(job, [f"{k}={json.dumps(v)}" for k, v in trial.settings.items()] + [
                f"train.steps={entry['steps']}", f"checkpoint.uri={root / 'processes' / trial.trial_id}"])
            job_file = root / "processes" / f"{trial.trial_id}.yaml"
            job_file.parent.mkdir(parents=True, exist_ok=True)
            job_file.write_text(yaml.safe_dump(trial_job.model_dump(mode="json"), sort_keys=False))
            clock = time.perf_counter()
            subprocess.run([sys.executable, "-m", "metadist", "train", str(job_file), "--no-progress"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            entry["process_wall_s"] = time.perf_counter() - clock
            print(f"{trial.trial_id} as `metadist train`: {entry['process_wall_s']:.2f} s", file=sys.stderr)
    alone_s = sum(a["wall_s"] for a in alone)
    processes_s = sum(a["process_wall_s"] for a in alone)
    finished = sum(t.status == "finished" for t in outcome.trials)
    fields = {
        "command": COMMAND, "trials": args.trials, "steps": args.steps, "eval_every": args.eval_every,
        "searcher": outcome.searcher, "ray": ray.__version__, "search_s": search_s, "alone_s": alone_s,
        "overhead_pct": 100 * (search_s / alone_s - 1), "finished": finished, "stopped": len(outcome.trials) - finished,
        "per_trial_s": (search_s - alone_s) / len(outcome.trials),
        "ray_s": ray_s, "per_trial_past_ray_s": (search_s - ray_s - alone_s) / len(outcome.trials),
        "processes": processes, "processes_s": processes_s,
        "overhead_vs_processes_pct": 100 * (search_s / processes_s - 1),
        "load_before": load_before, "load_after": os.getloadavg()[0],
    }
    fields["verdict"] = "met" if fields["overhead_pct"] <= TARGET_PCT else "not met"
    info = machine_info(load={"load_average_1min": [load_before, fields["load_after"]]}, ray=ray.__version__)
    report = {"machine": info, **fields, "alone": alone, "elapsed_s": time.perf_counter() - started}
    section = render("tune_overhead", date=info["date"][:10], cores=info["cores"], **fields)
    publish(report, args.results, section, DOC_SECTION, args.doc)


def _trial_pids(experiment: Path) -> set[int]:
    """The worker processes the search's trials reported from (each result carries its process's pid)."""
    pids = set()
    for results in experiment.glob("*/result.json"):
        pids |= {json.loads(line).get("pid") for line in results.read_text().splitlines() if line.strip()}
    return pids - {None}


if __name__ == "__main__":
    main()
