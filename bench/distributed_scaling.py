"""Distributed benchmark: meta-training tasks/s on Ray with 1 and 2 task workers against the in-process trainer,
bytes moved per outer step and the parameter server's apply latency; and (--simulated) the distributed path's own
overhead per step from 1 to 64 workers on a several-node Ray cluster on loopback.

Run (about 5 minutes on 2 cores; --simulated about 15):

    .venv/bin/python bench/distributed_scaling.py
    .venv/bin/python bench/distributed_scaling.py --simulated

--simulated: a `ray.cluster_utils.Cluster` of --nodes nodes on loopback (declared CPU slots, all on these 2 cores).
Each task worker is metadist.distributed.stand_in's: it fetches each parameter version, waits --compute-s (250 ms)
instead of computing, and returns an update of the real size; everything else (dispatch, reducers, the parameter
server's sum and Adam step, publishing) is the real code. Sizes: conv-4 with 64 filters (0.43 MiB) and a conv-4
of 660 filters with the parameter count of the few-shot literature's ResNet-12 (12M, about 47 MiB), the latter at
the worker counts memory allows. Per worker count: step time (median of the steps after the first two), overhead =
step time − compute time, bytes into the parameter server per step, and into the busiest process (the server or a
reducer). The control: the same workers as bare Ray actors that only sleep --compute-s (W calls, then wait for
all) — Ray's own dispatch floor on this machine, which a real cluster (one raylet per machine, not all on 2 cores)
does not pay as much of.

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


SIMULATED_RESULTS_PATH = results_path("distributed_scaling_simulated")
SIMULATED_DOC_SECTION = template_heading("distributed_scaling_simulated")
SIMULATED_COMMAND = ".venv/bin/python bench/distributed_scaling.py --simulated"
# Update sizes: conv-4 as the Omniglot jobs use it, and the same net widened to ResNet-12's parameter count.
SIMULATED_MODELS = {"conv-4 (0.43 MiB)": 64, "12M parameters (47 MiB)": 660}
OVERHEAD_RATIO_TARGET = 3.0  # overhead at W = 64 at most this many times the overhead at W = 1 ...
OVERHEAD_SHARE_TARGET = 0.10  # ... and at most this share of the 250 ms step


def simulated_job(workers: int, hidden: int, steps: int, mode: str = "sync"):
    from metadist.config import JobConfig, apply_overrides

    return apply_overrides(JobConfig(), [
        "name=bench-simulated", "algorithm.name=maml", f"model.hidden={hidden}", "train.meta_batch=64",
        f"train.steps={steps}", "train.eval_every=0", "checkpoint.every=0", "tracking.enabled=false",
        f"distributed.workers={workers}", "distributed.cpus_per_worker=1", "distributed.start_timeout_s=900",
        f"distributed.mode={mode}",
    ])


def simulate_one(workers: int, hidden: int, steps: int, compute_s: float, mode: str = "sync") -> dict:
    """One worker count: the real distributed path with stand-in workers; step times and bytes."""
    import time

    from metadist.distributed import DistributedSteps
    from metadist.distributed.stand_in import stand_in_worker

    source = DistributedSteps(simulated_job(workers, hidden, steps, mode), progress=False, worker_class=stand_in_worker(compute_s))
    try:
        source.start()
        times, clock = [], time.perf_counter()
        for _ in source.steps(0):
            now = time.perf_counter()
            times.append(now - clock)
            clock = now
        stats = source.stats
        timed = times[2:]  # the first steps hold every worker's first fetch and Ray's warm-up
        step_s = statistics.median(timed)
        server = stats.server_bytes / max(stats.steps, 1)
        reducer = max(stats.reducer_bytes, default=0)
        update_mib = source.server.params.nbytes / 2**20 if source.server else 0.0
        return {"mode": f"simulated {mode}", "workers": workers, "nodes": len({s.info["node_id"] for s in source.group.live.values()}) if source.group else 0,
                "reducers": len(source.reducers), "update_mib": update_mib, "compute_s": compute_s, "step_s": step_s,
                "overhead_s": step_s - compute_s, "efficiency": compute_s / step_s, "server_bytes_per_step": server,
                "busiest_bytes_per_step": max(server, reducer), "step_times_s": timed,
                # async: outer steps applied per compute time (W workers at best apply W steps per compute time)
                "steps_per_compute_time": compute_s * len(timed) / max(sum(timed), 1e-9),
                "dropped_stale_updates": stats.dropped, "staleness_max": max(stats.staleness, default=0)}
    finally:
        source.close()


def ray_floor(workers: int, compute_s: float, steps: int, update_bytes: int) -> float:
    """Median time beyond compute_s of one round of W bare Ray actors that each fetch a new object of the update's
    size, sleep compute_s and return a buffer of that size: what moving the same bytes through Ray costs on this
    machine, with none of metadist's code."""
    import time

    import numpy as np
    import ray

    @ray.remote(num_cpus=1)
    class Sleeper:
        def round(self, seconds: float, box: list) -> np.ndarray:
            params = ray.get(box[0])
            time.sleep(seconds)
            return np.zeros_like(params)

    actors = [Sleeper.options(scheduling_strategy="SPREAD").remote() for _ in range(workers)]
    buffer = np.zeros(update_bytes // 4, np.float32)
    ray.get([a.round.remote(0, [ray.put(buffer)]) for a in actors])
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        box = [ray.put(buffer)]  # a new version each round, as the server publishes one each step
        ready = [a.round.remote(compute_s, box) for a in actors]
        ray.wait(ready, num_returns=len(ready), fetch_local=False)
        times.append(time.perf_counter() - started - compute_s)
    for a in actors:
        ray.kill(a)
    return statistics.median(times[1:])


def simulate(args: argparse.Namespace) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from metadist.distributed.ray_internals import loopback_only

    loopback_only()
    slots = max(args.sim_workers) // args.nodes + 2
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": slots, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=slots, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address, logging_level=logging.WARNING)
    rows, async_rows = [], []
    load_before = os.getloadavg()
    try:
        for model, hidden in SIMULATED_MODELS.items():
            for workers in args.sim_workers:
                if hidden > 64 and workers > args.max_large_workers:
                    continue  # memory: each worker holds the model and an update of 47 MiB
                row = simulate_one(workers, hidden, args.sim_steps, args.compute_s)
                row.update(model=model, ray_floor_s=ray_floor(workers, args.compute_s, args.sim_steps, int(row["update_mib"] * 2**20)))
                rows.append(row)
                print(f"{model:24s} W={workers:3d}: step {row['step_s'] * 1e3:7.1f} ms, overhead {row['overhead_s'] * 1e3:6.1f} ms "
                      f"(Ray alone {row['ray_floor_s'] * 1e3:5.1f} ms), server {row['server_bytes_per_step'] / 2**20:6.2f} MiB/step",
                      file=sys.stderr, flush=True)
        for workers in args.async_workers:
            row = simulate_one(workers, 64, 4 * args.sim_steps, args.compute_s, mode="async")
            row.update(model="conv-4 (0.43 MiB)", ray_floor_s=float("nan"))
            async_rows.append(row)
            print(f"async W={workers}: {row['steps_per_compute_time']:.2f} steps per compute time", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    conv4 = [r for r in rows if r["model"].startswith("conv-4")]
    first, last = conv4[0], conv4[-1]
    import ray as ray_module
    import torch

    return {
        "date": dt.date.today().isoformat(), "command": SIMULATED_COMMAND, "argv": sys.argv[1:],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "ray": ray_module.__version__, "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "nodes": args.nodes, "compute_s": args.compute_s, "rows": rows, "async_rows": async_rows,
        "targets": {
            "overhead_ratio": last["overhead_s"] / max(first["overhead_s"], 1e-9), "overhead_ratio_target": OVERHEAD_RATIO_TARGET,
            "overhead_share": last["overhead_s"] / args.compute_s, "overhead_share_target": OVERHEAD_SHARE_TARGET,
            "at_workers": last["workers"],
            "server_bytes_flat": len({r["server_bytes_per_step"] for r in conv4 if r["workers"] >= args.nodes}) == 1,
            "async_target": "steps per compute time >= 0.8 x W",
            "async_met": all(r["steps_per_compute_time"] >= 0.8 * r["workers"] for r in async_rows),
        },
    }


def simulated_markdown(result: dict) -> str:
    header = ["update", "workers", "reducers", "step", "overhead", "Ray alone", "efficiency", "into the server / step",
              "into the busiest process / step"]
    rows = [[r["model"], str(r["workers"]), str(r["reducers"]), f"{r['step_s'] * 1e3:.0f} ms", f"{r['overhead_s'] * 1e3:.0f} ms",
             f"{r['ray_floor_s'] * 1e3:.0f} ms", f"{r['efficiency']:.2f}", f"{r['server_bytes_per_step'] / 2**20:.2f} MiB",
             f"{r['busiest_bytes_per_step'] / 2**20:.2f} MiB"] for r in result["rows"]]
    return markdown_table(header, rows)


def async_markdown(result: dict) -> str:
    header = ["mode", "workers", "staleness bound", "steps per compute time", "target (0.8 × W)", "largest staleness applied",
              "updates dropped as too stale"]
    rows = [["async", str(r["workers"]), str(max(r["workers"] - 1, 0)), f"{r['steps_per_compute_time']:.2f}",
             f"{0.8 * r['workers']:.1f}", str(r.get("staleness_max", "")), str(r.get("dropped_stale_updates", ""))]
            for r in result.get("async_rows", [])]
    return markdown_table(header, rows)


def write_simulated_section(result: dict) -> None:
    t, m = result["targets"], result["machine"]
    verdict = (
        f"With conv-4 updates, the overhead at W = {t['at_workers']} is {t['overhead_ratio']:.1f}× the overhead at W = 1 "
        f"(target ≤ {OVERHEAD_RATIO_TARGET:g}×: {'met' if t['overhead_ratio'] <= OVERHEAD_RATIO_TARGET else 'not met'}) "
        f"and {100 * t['overhead_share']:.0f}% of the {result['compute_s'] * 1e3:.0f} ms step (target ≤ "
        f"{100 * OVERHEAD_SHARE_TARGET:.0f}%: {'met' if t['overhead_share'] <= OVERHEAD_SHARE_TARGET else 'not met'}); bytes into the "
        f"parameter server per step are {'the same at every worker count from the node count up' if t['server_bytes_flat'] else 'not flat'}."
    )
    body = render("distributed_scaling_simulated", command=SIMULATED_COMMAND, date=result["date"], cpus=m["cpus"],
                  ray=m["ray"], nodes=result["nodes"], compute_ms=result["compute_s"] * 1e3, table=simulated_markdown(result),
                  async_table=async_markdown(result), async_verdict="met" if t.get("async_met") else "not met",
                  verdict=verdict, load_before=m["load_average_before"][0], load_after=m["load_average_after"][0])
    replace_section(DOC_PATH, SIMULATED_DOC_SECTION, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--simulated", action="store_true", help="stand-in workers on a several-node cluster (see above)")
    parser.add_argument("--nodes", type=int, default=4, help="--simulated: nodes of the loopback cluster")
    parser.add_argument("--sim-workers", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--sim-steps", type=int, default=8, help="--simulated: outer steps per worker count")
    parser.add_argument("--compute-s", type=float, default=0.25, help="--simulated: the stand-in's compute time per slice")
    parser.add_argument("--max-large-workers", type=int, default=16, help="--simulated: most workers with 47 MiB updates")
    parser.add_argument("--async-workers", type=int, nargs="+", default=[1, 2, 4, 8], help="--simulated: async rows")
    parser.add_argument("--steps", type=int, default=30, help="outer steps per configuration and round")
    parser.add_argument("--window", type=int, default=5, help="steps per throughput window")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--from-json", action="store_true",
                        help="measure nothing: rewrite the docs section from bench/results/distributed_scaling.json")
    args = parser.parse_args(argv)
    if args.simulated:
        logging.basicConfig(level=logging.WARNING)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        result = load_json(SIMULATED_RESULTS_PATH) if args.from_json else simulate(args)
        if not args.from_json:
            write_json(SIMULATED_RESULTS_PATH, result)
        print(simulated_markdown(result))
        if not args.no_doc:
            write_simulated_section(result)
        return 0
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
