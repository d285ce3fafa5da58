"""Process benchmark: kernel time as a share of CPU time, minor page faults per step and peak RSS of `metadist train`
for MAML, ProtoNet, Matching Networks and Reptile on Omniglot 20-way 1-shot, from /usr/bin/time -v.

Run (about 10 minutes on 2 cores; most of it MAML):

    .venv/bin/python bench/process_faults.py --label before      # later, after a change: --label after

Each job is `metadist train JOB --set train.steps=S --set tracking.enabled=false --set train.eval_every=0
--set train.final_eval_episodes=2 --set checkpoint.uri=TMP --no-progress`, run in a fresh process under
`/usr/bin/time -v` twice: for --base-steps (default 10) and for --steps (default 60) outer steps. Start-up (imports,
shard sets, model), the final evaluation and the checkpoint cost the same in both, so the per-step figures are the
difference of the two runs over the difference in steps: minor faults per step = (faults(60) - faults(10)) / 50, and
the kernel share per step = Δsys / (Δuser + Δsys). The whole runs' own figures are kept as well.

The jobs: jobs/omniglot-20way-1shot-{maml,protonet,reptile}.yaml; Matching Networks has no job file of its own and
runs ProtoNet's (the same 30-way training episodes and max-pooling conv-4) with algorithm.name=matching.

Output: a table on stdout, bench/results/process_faults.json (one record per job and --label; a rerun with a label
replaces that label's records and keeps the others), and the section "## Process: kernel time and page faults in
training" of docs/benchmarks.md with a column per label (its text is docs/templates/process_faults.md).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO
from common.docs import markdown_table, render, replace_section, template_heading
from common.measure import Stopwatch
from common.results import add_output_arguments, load_json, machine_info, publish, results_path

RESULTS_PATH = results_path("process_faults")
DOC_SECTION = template_heading("process_faults")
COMMAND = ".venv/bin/python bench/process_faults.py"

# job name → (job file, extra overrides)
JOBS: dict[str, tuple[str, list[str]]] = {
    "maml": ("jobs/omniglot-20way-1shot-maml.yaml", []),
    "protonet": ("jobs/omniglot-20way-1shot-protonet.yaml", []),
    "matching": ("jobs/omniglot-20way-1shot-protonet.yaml", ["algorithm.name=matching"]),
    "reptile": ("jobs/omniglot-20way-1shot-reptile.yaml", []),
}
KERNEL_SHARE_TARGET = 0.05  # kernel time under 5% of the process's CPU time, per step, for every job
FIELDS = {  # /usr/bin/time -v's lines → record keys
    "User time (seconds)": "user_s",
    "System time (seconds)": "sys_s",
    "Minor (reclaiming a frame) page faults": "minor_faults",
    "Major (requiring I/O) page faults": "major_faults",
    "Maximum resident set size (kbytes)": "max_rss_kib",
    "Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall",
    "Exit status": "exit_status",
}


# -- one run ----------------------------------------------------------------------------------------------------------
def train_command(job: str, steps: int, final_eval_episodes: int, checkpoints: str) -> list[str]:
    """`metadist train` of `job` for `steps` outer steps: no tracking, no evaluation during training, a small final
    evaluation, checkpoints in a temporary folder, no progress bars."""
    job_file, extra = JOBS[job]
    sets = [f"train.steps={steps}", "tracking.enabled=false", "train.eval_every=0",
            f"train.final_eval_episodes={final_eval_episodes}", f"checkpoint.uri={checkpoints}", *extra]
    return ["metadist", "train", job_file, *(item for s in sets for item in ("--set", s)), "--no-progress"]


def parse_time_v(text: str) -> dict:
    """The figures of a /usr/bin/time -v report: user_s, sys_s, minor_faults, major_faults, max_rss_mib, wall_s,
    exit_status."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().rpartition(": ")
        if sep and key in FIELDS:
            out[FIELDS[key]] = value.strip()
    missing = set(FIELDS.values()) - set(out)
    if missing:
        raise ValueError(f"/usr/bin/time -v report lacks {sorted(missing)}:\n{text}")
    *hours_minutes, seconds = out.pop("wall").split(":")
    wall_s = float(seconds) + sum(int(v) * 60 ** (len(hours_minutes) - i) for i, v in enumerate(hours_minutes))
    return {
        "user_s": float(out["user_s"]), "sys_s": float(out["sys_s"]), "minor_faults": int(out["minor_faults"]),
        "major_faults": int(out["major_faults"]), "max_rss_mib": int(out["max_rss_kib"]) / 1024, "wall_s": wall_s,
        "exit_status": int(out["exit_status"]),
    }


def kernel_share(user_s: float, sys_s: float) -> float | None:
    return sys_s / (user_s + sys_s) if user_s + sys_s > 0 else None


def timed_run(job: str, steps: int, args: argparse.Namespace, tmp: Path) -> dict:
    """`metadist train` under /usr/bin/time -v in a fresh process; its figures, and the load around it."""
    command = train_command(job, steps, args.final_eval_episodes, str(tmp / f"{job}-{steps}"))
    report = tmp / f"{job}-{steps}.time"
    argv = ["/usr/bin/time", "-v", "-o", str(report), sys.executable, "-m", "metadist", *command[1:]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    load_before = os.getloadavg()[0]
    done = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    figures = parse_time_v(report.read_text(encoding="utf-8"))
    return {"steps": steps, **figures, "kernel_share": kernel_share(figures["user_s"], figures["sys_s"]),
            "load_average_1min": [load_before, os.getloadavg()[0]], "command": shlex.join(command).replace(str(tmp), "$TMP")}


def measure(job: str, args: argparse.Namespace, tmp: Path) -> dict:
    """The job's record: the --steps run's own figures, and per step the difference to the --base-steps run."""
    base, full = timed_run(job, args.base_steps, args, tmp), timed_run(job, args.steps, args, tmp)
    steps = full["steps"] - base["steps"]
    delta = {key: full[key] - base[key] for key in ("user_s", "sys_s", "minor_faults", "wall_s")}
    record = {
        "job": job, "label": args.label, "steps": full["steps"],
        **{key: full[key] for key in ("user_s", "sys_s", "kernel_share", "minor_faults")},
        "minor_faults_per_step": delta["minor_faults"] / steps,
        "max_rss_mib": full["max_rss_mib"],
        "wall_s": full["wall_s"],
        "per_step": {
            "from_steps": [base["steps"], full["steps"]],
            "kernel_share": kernel_share(delta["user_s"], delta["sys_s"]),
            **{key: value / steps for key, value in delta.items()},
        },
        "runs": [base, full],
    }
    progress(record)
    return record


def progress(r: dict) -> None:
    p = r["per_step"]
    print(f"  {r['job']:<9} per step: kernel {fmt_share(p['kernel_share'])} of CPU, {p['minor_faults']:,.0f} minor faults, "
          f"{p['wall_s']:.2f} s wall; whole {r['steps']}-step run: kernel {fmt_share(r['kernel_share'])}, peak RSS "
          f"{r['max_rss_mib']:,.0f} MiB (1-min load {r['runs'][-1]['load_average_1min'][1]:.2f})", file=sys.stderr, flush=True)


# -- the records ------------------------------------------------------------------------------------------------------
def replace_label(records: list[dict], new: list[dict], label: str) -> list[dict]:
    """`records` with those of `label` replaced by `new`, where the label's first record stood (else at the end)."""
    kept = [r for r in records if r["label"] != label]
    first = next((i for i, r in enumerate(records) if r["label"] == label), len(records))
    at = sum(r["label"] != label for r in records[:first])
    return kept[:at] + new + kept[at:]


def labels_of(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["label"] for r in records))


# -- the report -------------------------------------------------------------------------------------------------------
def fmt_share(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f}%"


def per_step_table(report: dict) -> str:
    labels, by = labels_of(report["records"]), {(r["job"], r["label"]): r for r in report["records"]}
    metrics = [
        ("kernel share of CPU", lambda r: fmt_share(r["per_step"]["kernel_share"])),
        ("minor faults", lambda r: f"{r['per_step']['minor_faults']:,.0f}"),
        ("wall (s)", lambda r: f"{r['per_step']['wall_s']:.2f}"),
    ]
    header = ["Job (per step)"] + [f"{name}, {label}" for name, _ in metrics for label in labels]
    rows = []
    for job in dict.fromkeys(r["job"] for r in report["records"]):
        cells = [job]
        for _, fmt in metrics:
            cells += [fmt(by[job, label]) if (job, label) in by else "not run" for label in labels]
        rows.append(cells)
    return markdown_table(header, rows)


def runs_table(report: dict) -> str:
    header = ["Job", "label", "steps", "user (s)", "sys (s)", "kernel share", "minor faults", "wall (s)",
              "peak RSS (MiB)", "1-min load before → after"]
    rows = [
        [r["job"], r["label"], str(run["steps"]), f"{run['user_s']:.1f}", f"{run['sys_s']:.1f}",
         fmt_share(run["kernel_share"]), f"{run['minor_faults']:,}", f"{run['wall_s']:.1f}", f"{run['max_rss_mib']:,.0f}",
         "{:.2f} → {:.2f}".format(*run["load_average_1min"])]
        for r in report["records"] for run in r["runs"]
    ]
    return markdown_table(header, rows, align="llrrrrrrrl")


def targets(report: dict) -> str:
    lines = []
    for label in labels_of(report["records"]):
        records = [r for r in report["records"] if r["label"] == label]
        shares = [r["per_step"]["kernel_share"] for r in records]
        met = all(s is not None and s < KERNEL_SHARE_TARGET for s in shares)
        figures = ", ".join(f"{r['job']} {fmt_share(r['per_step']['kernel_share'])}" for r in records)
        lines.append(f"- {label}: **{'met' if met else 'missed'}** ({figures})")
    return "\n".join(lines)


def label_lines(report: dict) -> str:
    lines = []
    for label, info in report["labels"].items():
        m = info["machine"]
        loads = [x for r in report["records"] if r["label"] == label for run in r["runs"] for x in run["load_average_1min"]]
        lines.append(
            f"- {label}: `{info['command']}`, run on {m['date'][:10]}: {m['cores']} cores ({m['cpu']}), Python {m['python']}, "
            f"torch {m['torch']}; runs of {info['base_steps']} and {info['steps']} steps; 1-minute load average "
            f"{min(loads):.2f}–{max(loads):.2f} at the starts and ends of its runs."
        )
    return "\n".join(lines)


def doc_section(report: dict) -> str:
    commands = {r["job"]: r["runs"][-1]["command"] for r in report["records"]}
    return render(
        "process_faults", target=f"{100 * KERNEL_SHARE_TARGET:.0f}%", labels=label_lines(report),
        per_step_table=per_step_table(report), runs_table=runs_table(report), targets=targets(report),
        commands="\n".join(f"- {job}: `{command}`" for job, command in commands.items()),
    )


# -- entry point ------------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", help="what the figures are of, e.g. 'before' or 'after' a change (required unless --doc-only)")
    parser.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS), help="jobs to run (default all)")
    parser.add_argument("--steps", type=int, default=60, help="outer steps of the measured run (default 60)")
    parser.add_argument("--base-steps", type=int, default=10, help="outer steps of the run subtracted (default 10)")
    parser.add_argument("--final-eval-episodes", type=int, default=2, help="episodes of the final evaluation (default 2)")
    add_output_arguments(parser, RESULTS_PATH)
    parser.add_argument("--doc-only", action="store_true", help="measure nothing: write the doc section from --results")
    args = parser.parse_args()
    if not args.doc_only and not args.label:
        parser.error("--label is required")
    if args.steps <= args.base_steps:
        parser.error("--steps must be more than --base-steps")
    return args


def main() -> None:
    args = parse_args()
    report = load_json(args.results, {"records": [], "labels": {}})
    if args.doc_only:
        replace_section(args.doc, DOC_SECTION, doc_section(report))
        print(f"wrote the section {DOC_SECTION!r} of {args.doc} from {args.results}")
        return
    watch = Stopwatch()
    print(f"per step: the difference of {args.steps}- and {args.base_steps}-step runs (label {args.label!r}):", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="metadist-bench-faults-") as tmp:
        records = [measure(job, args, Path(tmp)) for job in args.jobs]
    report["records"] = replace_label(report["records"], records, args.label)
    report["labels"][args.label] = {
        "command": shlex.join([COMMAND.split()[0], "bench/process_faults.py", *sys.argv[1:]]),
        "steps": args.steps,
        "base_steps": args.base_steps,
        "final_eval_episodes": args.final_eval_episodes,
        "machine": machine_info(load={"load_average_at_end": list(os.getloadavg())}),
        "elapsed_s": watch.wall,
    }
    report["elapsed_s"] = watch.wall
    publish(report, args.results, doc_section(report), DOC_SECTION, args.doc)


if __name__ == "__main__":
    main()
