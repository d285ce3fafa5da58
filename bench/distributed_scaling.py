"""Distributed benchmark: meta-training tasks/s on Ray with 1 and 2 task workers against the in-process trainer,
bytes moved per outer step and the parameter server's apply latency.

Run (about 5 minutes on 2 cores):

    .venv/bin/python bench/distributed_scaling.py

The job: MAML on the bundled Omniglot small1, 5-way 1-shot, 5 queries per class, rotation classes, conv-4 with 64
filters (112k parameters), meta-batch 32, one inner step, Adam; no evaluation or checkpoints while timed.

  * local: LocalTrainer in this process with train.threads = 1 — "one in-process worker with the same threads".
  * W workers: DistributedTrainer, synchronous, W task workers of 1 CPU slot and 1 torch thread each, on a Ray
    started in this process (loopback, no dashboard), the meta-batch cut into W slices.

Each configuration runs --steps outer steps, logging every --window steps; tasks/s is the median over the
windows after the first (which holds start-up and cache warm-up). --rounds rounds run every configuration in turn,
and the figure is the median over rounds. Scaling efficiency = tasks/s(W) / (W × tasks/s(local)).

Output: a table on stdout, bench/results/distributed_scaling.json, and the section
"## Distributed: scaling on Ray" of docs/benchmarks.md (only that section is replaced, or appended; its text is
docs/templates/distributed_scaling.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import statistics
import sys
import tempfile
import textwrap

from common import BENCH_DIR
from common.docs import DOC_PATH, markdown_table, render, replace_section, template_heading
from common.measure import run_for
from common.results import load_json, results_path, write_json

RESULTS_PATH = results_path("distributed_scaling")
DOC_SECTION = template_heading("distributed_scaling")
COMMAND = ".venv/bin/python bench/distributed_scaling.py"
EFFICIENCY_TARGET = 0.85  # at W = 2 on this 2-core machine (the issue's)
THREADS = 1


def job_for(workers: int, steps: int, window: int, checkpoints: str):
    from metadist.config import apply_overrides
    from metadist.config import JobConfig

    return apply_overrides(JobConfig(), [
        "name=bench-distributed", "algorithm.name=maml", "train.meta_batch=32", f"train.steps={steps}",
        f"train.log_every={window}", "train.eval_every=0", "train.final_eval_episodes=1", f"train.threads={THREADS}",
        "checkpoint.every=0", f"checkpoint.uri={checkpoints}", "tracking.enabled=false",
        f"distributed.workers={workers}", "distributed.cpus_per_worker=1",
    ])


def _matmul_rate(seconds: float = 4.0) -> None:
    """Print 300×300 matmuls per second on one torch thread (a child process of `parallel_capacity`)."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(300, 300)
    calls, elapsed, _ = run_for(lambda: a @ a, seconds)
    print(calls / elapsed)


def parallel_capacity() -> float:
    """The control: how many times one process's compute rate two independent processes reach together right now
    (2.0 on two idle cores; less while other work shares them). Scaling above it is not possible."""
    import subprocess

    code = "import sys; sys.path.insert(0, %r); from distributed_scaling import _matmul_rate; _matmul_rate()" % str(BENCH_DIR)
    one = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    two = sum(float(p.communicate()[0]) for p in procs)
    return two / one


def measure(workers: int, steps: int, window: int) -> dict:
    from metadist.distributed import DistributedTrainer
    from metadist.training import LocalTrainer

    with tempfile.TemporaryDirectory(prefix="metadist-bench-") as tmp:
        job = job_for(workers, steps, window, tmp)
        trainer = DistributedTrainer(job, progress=False) if workers else LocalTrainer(job, progress=False)
        history = [h for h in trainer.run().history if "tasks_per_s" in h]
    timed = history[1:]  # the first window holds start-up and the sampler's cache warm-up
    out = {"tasks_per_s": statistics.median(h["tasks_per_s"] for h in timed), "windows": [h["tasks_per_s"] for h in timed]}
    if workers:
        for key in ("bytes_per_step", "ps_apply_ms", "ps_round_trip_ms"):
            out[key] = statistics.median(h[key] for h in timed)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="outer steps per configuration and round")
    parser.add_argument("--window", type=int, default=5, help="steps per throughput window")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--from-json", action="store_true",
                        help="measure nothing: rewrite the docs section from bench/results/distributed_scaling.json")
    args = parser.parse_args(argv)
    if args.from_json:
        result = load_json(RESULTS_PATH)
        write_section(markdown(result), result)
        return 0
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray
    import torch

    from metadist.config import DistributedConfig
    from metadist.distributed import connect

    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()
    capacity_before = parallel_capacity()
    connection = connect(DistributedConfig(workers=max(args.workers)), num_cpus=os.cpu_count())
    rounds: dict[str, list[dict]] = {}
    try:
        for r in range(args.rounds):
            for workers in [0, *args.workers]:
                name = "local" if workers == 0 else f"W={workers}"
                result = measure(workers, args.steps, args.window)
                rounds.setdefault(name, []).append(result)
                print(f"round {r + 1}: {name:6s} {result['tasks_per_s']:7.1f} tasks/s", file=sys.stderr, flush=True)
    finally:
        connection.close()
    load_after = os.getloadavg()
    capacity_after = parallel_capacity()

    local = statistics.median(x["tasks_per_s"] for x in rounds["local"])
    rows = [{"configuration": "local (in-process, 1 thread)", "workers": 0, "tasks_per_s": local, "efficiency": None}]
    for workers in args.workers:
        runs = rounds[f"W={workers}"]
        tput = statistics.median(x["tasks_per_s"] for x in runs)
        rows.append({
            "configuration": f"Ray, {workers} task worker{'s' if workers > 1 else ''}", "workers": workers, "tasks_per_s": tput,
            "efficiency": tput / (workers * local),
            "bytes_per_step": statistics.median(x["bytes_per_step"] for x in runs),
            "ps_apply_ms": statistics.median(x["ps_apply_ms"] for x in runs),
            "ps_round_trip_ms": statistics.median(x["ps_round_trip_ms"] for x in runs),
        })
    two = next((row for row in rows if row["workers"] == 2), None)
    result = {
        "date": dt.date.today().isoformat(), "command": COMMAND, "argv": argv or sys.argv[1:],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "ray": ray.__version__,
                    "load_average_before": load_before, "load_average_after": load_after,
                    "parallel_capacity_before": capacity_before, "parallel_capacity_after": capacity_after},
        "job": "MAML, Omniglot small1 5-way 1-shot, 5 queries, conv-4 64 filters, meta-batch 32, 1 inner step, Adam",
        "rows": rows, "rounds": rounds,
        "efficiency_target_w2": EFFICIENCY_TARGET,
        "target_met_w2": None if two is None else two["efficiency"] >= EFFICIENCY_TARGET,
    }
    write_json(RESULTS_PATH, result)
    table = markdown(result)
    print(table)
    if not args.no_doc:
        write_section(table, result)
    return 0


def markdown(result: dict) -> str:
    header = ["configuration", "tasks/s", "scaling efficiency", "bytes per outer step", "server apply", "apply round trip"]
    rows = []
    for row in result["rows"]:
        eff = "—" if row["efficiency"] is None else f"{row['efficiency']:.2f}"
        ray = (
            [f"{row['bytes_per_step'] / 2**20:.2f} MiB", f"{row['ps_apply_ms']:.1f} ms", f"{row['ps_round_trip_ms']:.1f} ms"]
            if row["workers"] else ["—"] * 3
        )
        rows.append([row["configuration"], f"{row['tasks_per_s']:.1f}", eff, *ray])
    return markdown_table(header, rows)


def write_section(table: str, result: dict) -> None:
    m = result["machine"]
    two = next((row for row in result["rows"] if row["workers"] == 2), None)
    capacity = (m["parallel_capacity_before"] + m["parallel_capacity_after"]) / 2
    verdict = "" if two is None else (
        f"At W = 2 the efficiency is **{two['efficiency']:.2f}** against the target of {EFFICIENCY_TARGET} "
        f"({'met' if result['target_met_w2'] else 'not met'}); against the parallelism the machine had to give while "
        f"it ran (the control below, {capacity:.2f}× on average), W = 2 reached "
        f"{two['tasks_per_s'] / (min(2.0, capacity) * result['rows'][0]['tasks_per_s']):.2f} of what was possible.")
    body = render(
        "distributed_scaling", command=COMMAND, date=result["date"], cpus=m["cpus"], torch=m["torch"], ray=m["ray"],
        job=result["job"], rounds=len(result["rounds"]["local"]), table=table, verdict=verdict,
        load_before=m["load_average_before"][0], load_after=m["load_average_after"][0],
        capacity_before=m["parallel_capacity_before"], capacity_after=m["parallel_capacity_after"],
    )
    # Re-wrap the prose paragraphs (not the heading or the table) to the docs' line width.
    paragraphs = body.strip("\n").split("\n\n")
    body = "\n\n".join(p if p.startswith(("#", "|")) else textwrap.fill(" ".join(p.split()), width=116)
                        for p in paragraphs) + "\n"
    replace_section(DOC_PATH, DOC_SECTION, body)


if __name__ == "__main__":
    sys.exit(main())
