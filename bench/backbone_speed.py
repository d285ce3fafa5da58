"""Backbone speed and memory, side by side with learn2learn: ResNet-12 on 84×84 RGB, 5-way 1-shot, 15 queries per
class, 4 tasks per meta-batch, the same threads, synthetic images (bench/_backbone_common.py).

Run (quiet machine; about 20 minutes on 2 cores, each learner's steps take tens of seconds here):

    .venv/bin/python bench/backbone_speed.py                     # ProtoNet, ANIL, FOMAML, MAML (1 inner step)
    .venv/bin/python bench/backbone_speed.py protonet --steps 3

Each (side, learner) runs in a fresh process: metadist's `compute_update` and outer Adam step on its ResNet12
(`model.name: resnet12`, the same 12,427,525 parameters as learn2learn's), against learn2learn 0.2.0's loop on its
own ResNet12 (bench/_l2l_backbone.py, under the learn2learn virtualenv: ../shared/peers/setup-learn2learn.sh).
metadist differentiates one task at a time (`algorithm.tasks_per_pass: 1`), as learn2learn's loop does: with all
four tasks' 84-pixel activations alive together, second-order MAML would not fit in this machine's memory. Figures:
tasks/s over the timed steps (after the warm-up ones) and each process's peak resident memory.
Targets (issue 16): ≥ 1.5× learn2learn's tasks/s on each learner, and peak memory no higher. metadist runs with the
C heap policy a ResNet-12 job gets by default (`train.retain_freed_memory`: freed memory returned to the OS);
`--retained` also times it keeping freed memory. A last worker counts one ProtoNet task's floating-point operations
and times a large matrix product: how close to this CPU's arithmetic rate the peer already runs.

Output: a table on stdout, bench/results/backbone_speed.json and the section "## Backbones: ResNet-12 speed and
memory against learn2learn" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

from _backbone_common import TASKS, WAYS, episodes, side_result
from common import BENCH_DIR
from common.docs import markdown_table, replace_section
from common.peers import add_l2l_argument, resolve_l2l_python
from common.results import add_output_arguments, emit, machine_info, results_path, run_worker, worker_env, write_json

RESULTS_PATH = results_path("backbone_speed")
HEADING = "## Backbones: ResNet-12 speed and memory against learn2learn"
COMMAND = ".venv/bin/python bench/backbone_speed.py"
LEARNERS = ("protonet", "anil", "fomaml", "maml")
TARGET_RATIO = 1.5


def metadist_side(learner: str, threads: int, warmup: int, steps: int, retain: bool) -> None:
    """In this (fresh) process: metadist's meta-training steps for `learner`, the C heap keeping freed memory or not
    (train.retain_freed_memory); prints the result line."""
    import torch

    import metadist
    from metadist.algorithms import build_learner
    from metadist.algorithms.outer import MetaOptimizer
    from metadist.api.learners import Episodes
    from metadist.config import AlgorithmConfig, ModelConfig, OptimizerConfig
    from metadist.models import build_model
    from metadist.runtime import configure_process

    configure_process(threads, retain)
    torch.manual_seed(0)
    metric = learner == "protonet"
    model = build_model(ModelConfig(name="resnet12"), input_shape=(3, 84, 84), outputs=None if metric else WAYS)
    algorithm = AlgorithmConfig(name=learner, inner_lr=0.01, inner_steps=1, tasks_per_pass=1)
    meta = build_learner(algorithm, model, "classification", ways=WAYS, shots=1)
    outer = MetaOptimizer.for_learner(meta, meta.init_meta_params(), OptimizerConfig(name="adam", lr=1e-3, clip_norm=None),
                                      total_steps=warmup + steps)
    timed = 0.0
    for index, (sx, sy, qx, qy) in enumerate(episodes(warmup + steps)):
        start = time.perf_counter()
        outer.apply(meta.compute_update(outer.meta_params(), Episodes(sx, sy, qx, qy)))
        if index >= warmup:
            timed += time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emit(side_result(steps * TASKS / timed, peak_mb, metadist.__version__))


def reading(arithmetic: dict, default_retains: bool) -> str:
    """What the figures say about the targets: the arithmetic bound on speed, and the C heap's policy."""
    text = (f"The C heap's policy: {'kept' if default_retains else 'returned to the OS'} freed memory for these rows "
            "(`train.retain_freed_memory`'s default for `resnet12`; metadist.runtime); the last column, where run "
            "(`--retained`), is metadist keeping it, as it does for conv-4. Both sides run the same convolutions in "
            f"the same library. One ProtoNet task (80 images forward and backward) is "
            f"{arithmetic['protonet_task_gflop']:,.0f} GFLOP; this machine multiplies large fp32 matrices at "
            f"{arithmetic['matmul_gflops']:.0f} GFLOP/s on {arithmetic.get('threads', 2)} threads.")
    share = arithmetic.get("learn2learn_protonet_share")
    if share:
        text += (f" learn2learn's ProtoNet already runs at {arithmetic['learn2learn_protonet_gflops']:.0f} GFLOP/s, "
                 f"{share:.0%} of that rate; 1.5× its speed would take {1.5 * share:.0%} of it, batch norm, "
                 "activations and pooling included: out of reach for any fp32 implementation on this CPU.")
    return text


def arithmetic_side(threads: int) -> None:
    """In this (fresh) process: the floating-point operations of one ProtoNet task (forward and backward through
    ResNet-12 for its 80 images) and this machine's rate for a large fp32 matrix product, the fastest thing a CPU
    does; prints the result line."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from metadist.models import ResNet12

    torch.set_num_threads(threads)
    model = ResNet12(3, None)
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(WAYS * 16, 3, 84, 84)).pow(2).sum().backward()
    a, b = torch.rand(4096, 4096), torch.rand(4096, 4096)
    a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    emit({"protonet_task_gflop": counter.get_total_flops() / 1e9, "matmul_gflops": 2 * 4096**3 / best / 1e9,
          "threads": threads})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("learners", nargs="*", default=list(LEARNERS), help=f"any of {', '.join(LEARNERS)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--retained", action="store_true",
                        help="also time metadist with the C heap keeping freed memory (train.retain_freed_memory: true)")
    parser.add_argument("--side", choices=("metadist", "metadist-retained", "arithmetic"), help=argparse.SUPPRESS)  # a worker process
    add_l2l_argument(parser, "learn2learn's interpreter")
    add_output_arguments(parser, RESULTS_PATH)
    args = parser.parse_args()
    unknown = [name for name in args.learners if name not in LEARNERS]
    if unknown:
        parser.error(f"unknown learners {unknown}; choose from {', '.join(LEARNERS)}")
    if args.side:
        if args.side == "arithmetic":
            arithmetic_side(args.threads)
        else:
            metadist_side(args.learners[0], args.threads, args.warmup, args.steps, args.side == "metadist-retained")
        return
    from metadist.config import JobConfig, ModelConfig

    default_retains = JobConfig(model=ModelConfig(name="resnet12")).retains_freed_memory()
    l2l_python = resolve_l2l_python(args.l2l_python)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows, table = [], []
    for learner in args.learners:
        common = ["--threads", str(args.threads), "--warmup", str(args.warmup), "--steps", str(args.steps)]
        sides = ["metadist-retained" if default_retains else "metadist"]
        if args.retained and not default_retains:
            sides.append("metadist-retained")
        ours, *kept_runs = [run_worker([sys.executable, str(BENCH_DIR / "backbone_speed.py"), learner, "--side", side,
                                        *common], env=worker_env(args.threads)) for side in sides]
        kept = kept_runs[0] if kept_runs else None
        theirs = None
        if l2l_python is not None:
            theirs = run_worker([l2l_python, str(BENCH_DIR / "_l2l_backbone.py"), "--learner", learner, *common],
                                env=worker_env(args.threads), cwd=BENCH_DIR)
        row = {"learner": learner, "metadist": ours, "learn2learn": theirs, "metadist_heap_kept": kept}
        if theirs:
            row["speed_ratio"] = ours["tasks_per_s"] / theirs["tasks_per_s"]
            row["memory_ratio"] = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
            row["verdict"] = "met" if row["speed_ratio"] >= TARGET_RATIO and row["memory_ratio"] <= 1 else "not met"
        rows.append(row)
        print(learner, ours, theirs, file=sys.stderr, flush=True)
        table.append([learner, f"{ours['tasks_per_s']:.3f}", f"{ours['peak_rss_mb']:,.0f}",
                      f"{theirs['tasks_per_s']:.3f}" if theirs else "—", f"{theirs['peak_rss_mb']:,.0f}" if theirs else "—",
                      f"{row['speed_ratio']:.2f}×" if theirs else "—", f"{row['memory_ratio']:.2f}" if theirs else "—",
                      row.get("verdict", "—"),
                      f"{kept['tasks_per_s']:.3f} / {kept['peak_rss_mb']:,.0f}" if kept else "—"])
    arithmetic = run_worker([sys.executable, str(BENCH_DIR / "backbone_speed.py"), "--side", "arithmetic",
                             "--threads", str(args.threads)], env=worker_env(args.threads))
    peer = next((r["learn2learn"] for r in rows if r["learner"] == "protonet" and r["learn2learn"]), None)
    if peer:  # how close the peer already runs to the machine's arithmetic rate
        arithmetic["learn2learn_protonet_gflops"] = peer["tasks_per_s"] * arithmetic["protonet_task_gflop"]
        arithmetic["learn2learn_protonet_share"] = arithmetic["learn2learn_protonet_gflops"] / arithmetic["matmul_gflops"]
    info = machine_info(load={"load_average_1min": [load_before, os.getloadavg()[0]]})
    report = {"machine": info, "command": f"{COMMAND} --steps {args.steps}" + (" --retained" if args.retained else ""),
              "retain_freed_memory_default": default_retains, "threads": args.threads, "warmup": args.warmup, "steps": args.steps,
              "rows": rows, "arithmetic": arithmetic, "elapsed_s": time.perf_counter() - started}
    write_json(args.results, report)
    header = ["learner", "metadist tasks/s", "metadist peak RSS (MB)", "learn2learn tasks/s", "learn2learn peak RSS (MB)",
              "speed (target ≥ 1.5×)", "memory (target ≤ 1)", "verdict", "metadist, heap kept: tasks/s / MB"]
    command = f"{COMMAND} --steps {args.steps}" + (" --retained" if args.retained else "")
    section = (f"{HEADING}\n\n`{command}` ({info['date'][:10]}; {info['cores']} CPUs, {args.threads} threads, torch "
               f"{info['torch']}; 1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after). "
               "ResNet-12 (12,427,525 parameters on both sides; DropBlock off), 84×84 RGB synthetic images, 5-way "
               f"1-shot, 15 queries per class, {TASKS} tasks per meta-batch, 1 inner step at 0.01, Adam; each side and "
               f"learner in a fresh process, {args.warmup} warm-up step(s) then {args.steps} timed. metadist "
               "differentiates one task at a time (`tasks_per_pass: 1`) as learn2learn's loop does, by plain autograd: "
               "one task has nothing for vmap to batch, and torch.func's grad keeps a graph of its backward pass (one "
               "ProtoNet task held 11 GB under it, 18 GB under vmap, where these rows hold 3-4 GB; before this route, "
               "the same rows measured 8.6-10.0 GB). ResNet-12's LeakyReLUs run in place. Raw figures: "
               "`bench/results/backbone_speed.json`.\n\n"
               + markdown_table(header, table, align="lrrrrrrlr") + "\n\n" + reading(arithmetic, default_retains) + "\n")
    if args.doc is not None:
        replace_section(args.doc, HEADING, section)
    print(section)


if __name__ == "__main__":
    main()
