"""Data-layer benchmark: episodes per second and peak memory of metadist's EpisodeSampler, side by side with
learn2learn 0.2.0's TaskDataset on the same Omniglot images (images_background_small1: 136 characters × 20).

Run (about 4 minutes on 2 cores):

    .venv/bin/python bench/data_sampler.py          # or: make bench-data

What it measures, for 5-way and 20-way 1-shot episodes with 5 queries per class, with and without rotation
classes, with torch.set_num_threads(1) on both sides:
  * metadist, one episode per call, sampler.sample(step, [0]): the unit of work of learn2learn's sample();
  * metadist, a meta-batch of 32 episodes per call, sampler.sample(step, range(32)): how the trainer calls it;
  * learn2learn, TaskDataset(...).sample() with the transforms of its own Omniglot benchmark (bench/_l2l_sampler.py,
    run under the learn2learn virtualenv given by --l2l-python, $L2L_PYTHON or /tmp/l2l-venv/bin/python).
  Each figure is measured in --processes fresh processes (default 3): a warm-up, then --repeats timed runs of at
  least --seconds each; the table gives the median over all timed runs and their range. Each metadist process
  starts as every metadist process does (metadist.runtime.configure_process: the C heap keeps freed memory);
  without it, how fast a process samples depended on the state of its C heap (`minor_faults_per_call` in the JSON:
  about 750 per 32-episode call then, 0 now).
  Memory is the sampling process's peak RSS (VmHWM) and its RssAnon when done, from /proc/self/status (the
  largest over the processes).
And whether peak memory stays flat when the shard set is 10× larger: small1 is written once (1×) and ten times
under different class names (10×) in small shards, then each set is sampled (5-way 1-shot 5-query, rotations,
16 episodes per call) in a fresh process with the same cache budget, smaller than either set.

Output: a table on stdout, bench/results/data_sampler.json, and the section "## Data layer: episode sampling"
of docs/benchmarks.md (only that section is replaced).

The module's top level imports only the standard library (and bench/common, which does too); metadist is imported
inside functions. The section's text is docs/templates/data_sampler.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common import BENCH_DIR
from common.docs import fmt_sources, markdown_table, render, template_heading
from common.measure import Stopwatch, measure_rate, memory_mb
from common.peers import add_l2l_argument, extract_bundled, l2l_line, resolve_l2l_python
from common.results import (
    add_output_arguments, emit, machine_info, publish, results_path, run_worker, source_hashes, worker_env,
)
from common.stats import fmt_spread, spread

RESULTS_PATH = results_path("data_sampler")
DOC_SECTION = template_heading("data_sampler")
COMMAND = ".venv/bin/python bench/data_sampler.py"

SHOTS, QUERIES = 1, 5
META_BATCH = 32  # episodes per call in the trainer's usage
THREADS = 1  # torch.set_num_threads on both sides
SEED = 0
SPEED_CACHE_MB = 512  # the sampler's default: all 136 classes stay resident
# The 10× test: a cache smaller than the 1× set (2.1 MB of pixels), so both sets stream through the same arena
# and any difference in memory comes from the shard set's size alone.
SCALE_FACTORS = (1, 10)
SCALE_SHARD_MB = 0.1  # about 6 classes per shard: 23 shards at 1×, 227 at 10×
SCALE_CACHE_MB = 2.0
SCALE_EPISODES = 2048
SCALE_TASKS_PER_CALL = 16  # 16 × 5 ways = 80 classes at most per call, within the 133-slot arena
# "Flat": the 10× set's peak RSS exceeds the 1× set's by at most 2 MiB, a tenth of the 19 MB of pixels it adds.
FLAT_TOLERANCE_MB = 2.0
CONTENDED_CPU_PER_WALL = 0.9  # below this, other processes took the core for part of a timed run
FAULTING_PER_CALL = 100  # minor page faults per call above which a process was refilling freed heap memory


@dataclass(frozen=True)
class Episodes:
    ways: int
    rotations: bool
    shots: int = SHOTS
    queries: int = QUERIES

    @property
    def name(self) -> str:
        return f"{self.ways}-way, " + ("rotations" if self.rotations else "no rotations")

    @property
    def target(self) -> float:
        """Required speed-up over learn2learn (the issue: ≥ 20× with rotation classes, ≥ 2× without)."""
        return 20.0 if self.rotations else 2.0


CONFIGS = (Episodes(5, True), Episodes(5, False), Episodes(20, True), Episodes(20, False))
SIDES = (("learn2learn", "learn2learn"), ("metadist_1", "metadist 1/call"), ("metadist_32", f"metadist {META_BATCH}/call"))


# -- worker processes -----------------------------------------------------------------------------------------------
def run_workers(command: list[str], processes: int) -> dict:
    """The same measurement in `processes` fresh processes: median and range of all timed runs, largest memory."""
    results = [run_worker(command, env=worker_env(THREADS)) for _ in range(processes)]
    return {
        **spread((rate for r in results for rate in r["episodes_per_s"]), "episodes_per_s"),
        "cpu_per_wall": min(c for r in results for c in r["cpu_per_wall"]),
        "memory_mb": {key: max(r["memory_mb"][key] for r in results) for key in results[0]["memory_mb"]},
        "memory_before_mb": {key: max(r["memory_before_mb"][key] for r in results) for key in results[0]["memory_before_mb"]},
        "processes": results,
    }


def worker_speed(args: argparse.Namespace) -> None:
    import torch

    from metadist.config import EpisodeConfig
    from metadist.data import EpisodeSampler, ShardSet
    from metadist.runtime import configure_process

    configure_process(THREADS)  # what every metadist process does at start: the C heap keeps freed memory
    shape = EpisodeConfig(ways=args.ways, shots=SHOTS, queries=QUERIES, rotations=args.rotations)
    sampler = EpisodeSampler(ShardSet(args.uri), shape, seed=SEED, cache_mb=SPEED_CACHE_MB)
    tasks = list(range(args.tasks_per_call))
    steps = iter(range(10**12))
    memory_before = memory_mb()
    timing = dict(seconds=args.seconds, repeats=args.repeats, warmup_s=args.warmup_s)
    rate = measure_rate(lambda: sampler.sample(next(steps), tasks), len(tasks), **timing)
    emit(
        {
            **rate,
            "memory_before_mb": memory_before,
            "memory_mb": memory_mb(),
            "threads": torch.get_num_threads(),
            "pandas_imported": "pandas" in sys.modules,  # pyarrow's to_numpy() imports it: ~30 MiB of RSS
        }
    )


def worker_scale(args: argparse.Namespace) -> None:

    from metadist.config import EpisodeConfig
    from metadist.data import EpisodeSampler, ShardSet
    from metadist.runtime import configure_process

    configure_process(THREADS)  # what every metadist process does at start: the C heap keeps freed memory
    shards = ShardSet(args.uri)
    shape = EpisodeConfig(ways=5, shots=SHOTS, queries=QUERIES, rotations=True)
    sampler = EpisodeSampler(shards, shape, seed=SEED, cache_mb=SCALE_CACHE_MB)
    tasks = list(range(SCALE_TASKS_PER_CALL))
    memory_before = memory_mb()
    watch = Stopwatch()
    for step in range(SCALE_EPISODES // len(tasks)):
        sampler.sample(step, tasks)
    elapsed, cpu_s = watch.wall, watch.cpu
    emit(
        {
            "episodes": SCALE_EPISODES,
            "episodes_per_s": SCALE_EPISODES / elapsed,
            "cpu_per_wall": cpu_s / elapsed,
            "classes": len(shards.manifest.classes),
            "shards": len(shards.manifest.shards),
            "cache_slots": sampler.cache.slots,
            "classes_loaded": sampler.cache.loads,
            "memory_before_mb": memory_before,
            "memory_mb": memory_mb(),
        }
    )


# -- the parent: data preparation -----------------------------------------------------------------------------------
def small1_uri() -> str:
    from metadist.data import resolve_uri

    return resolve_uri("bundled://omniglot-small1", progress=False)


def write_scaled_set(source_uri: str, factor: int, out: Path) -> str:
    """small1's classes written `factor` times under different names, in shards of SCALE_SHARD_MB."""
    from metadist.data import ShardSet, ShardSetWriter

    source = ShardSet(source_uri)
    manifest = source.manifest
    with ShardSetWriter(
        str(out),
        dataset={"name": f"omniglot-small1-x{factor}", "source": source_uri},
        preprocessing=manifest.preprocessing,
        example_shape=manifest.example_shape,
        shard_mb=SCALE_SHARD_MB,
    ) as writer:
        for copy in range(factor):
            for index, info in enumerate(manifest.classes):
                name = f"copy{copy}/{info.name}"
                pixels = source.read_class(index)
                sources = [f"{name}/{i}" for i in range(len(pixels))]
                writer.add_class(name, group=f"copy{copy}/{info.group}", examples=pixels, sources=sources)
    return str(out)


# -- the parent: measurements ---------------------------------------------------------------------------------------
def episode_flags(episodes: Episodes, args: argparse.Namespace) -> list[str]:
    flags = ["--ways", str(episodes.ways), "--seconds", str(args.seconds), "--repeats", str(args.repeats)]
    return flags + ["--warmup-s", str(args.warmup_s)] + (["--rotations"] if episodes.rotations else [])


def run_metadist(uri: str, episodes: Episodes, tasks_per_call: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", "speed", "--uri", uri, "--tasks-per-call", str(tasks_per_call)]
    return run_workers(command + episode_flags(episodes, args), args.processes)


def run_l2l(l2l_python: str, images: Path, episodes: Episodes, args: argparse.Namespace) -> dict:
    command = [l2l_python, str(BENCH_DIR / "_l2l_sampler.py"), "--images", str(images), "--threads", str(THREADS)]
    command += ["--shots", str(episodes.shots), "--queries", str(episodes.queries), "--seed", str(SEED)]
    return run_workers(command + episode_flags(episodes, args), args.processes)


def speed_row(episodes: Episodes, uri: str, images: Path | None, l2l_python: str | None, args) -> dict:
    row = {"episodes": asdict(episodes), "name": episodes.name, "target_speedup": episodes.target}
    row["learn2learn"] = run_l2l(l2l_python, images, episodes, args) if l2l_python else None
    progress(episodes.name, SIDES[0][1], row["learn2learn"])
    for (key, label), tasks_per_call in zip(SIDES[1:], (1, META_BATCH)):
        row[key] = run_metadist(uri, episodes, tasks_per_call, args)
        progress(episodes.name, label, row[key])
        ratio = row[key]["episodes_per_s"] / row["learn2learn"]["episodes_per_s"] if row["learn2learn"] else None
        row[f"speedup_{key}"] = ratio
        row[f"target_met_{key}"] = None if ratio is None else ratio >= episodes.target
    return row


def scale_rows(base_uri: str, workdir: Path) -> list[dict]:
    rows = []
    for factor in SCALE_FACTORS:
        uri = write_scaled_set(base_uri, factor, workdir / f"small1-x{factor}")
        rows.append({"factor": factor, **run_worker([sys.executable, __file__, "--worker", "scale", "--uri", uri], env=worker_env(THREADS))})
        progress(f"shard set × {factor}", "metadist", rows[-1])
    return rows


def flat_verdict(rows: list[dict]) -> dict:
    small, large = (next(r for r in rows if r["factor"] == f)["memory_mb"] for f in SCALE_FACTORS)
    growth = {key: large[key] - small[key] for key in ("peak_rss", "rss_anon")}
    return {"growth_mb": growth, "tolerance_mb": FLAT_TOLERANCE_MB, "flat": growth["peak_rss"] <= FLAT_TOLERANCE_MB}


def progress(what: str, side: str, result: dict | None) -> None:
    if result is None:
        print(f"  {what:<22} {side:<18} skipped", file=sys.stderr, flush=True)
        return
    spread = f" ({result['min_episodes_per_s']:,.0f}–{result['max_episodes_per_s']:,.0f})" if "processes" in result else ""
    figure = f"{result['episodes_per_s']:>7,.0f} episodes/s{spread}, CPU/wall ≥ {result['cpu_per_wall']:.2f}"
    print(f"  {what:<22} {side:<18} {figure}, peak RSS {result['memory_mb']['peak_rss']:.0f} MiB", file=sys.stderr, flush=True)


# -- the parent: report ---------------------------------------------------------------------------------------------
def machine(l2l_rows: list[dict | None]) -> dict:
    import numpy
    import pyarrow

    return machine_info(
        load={"load_average_1min_at_end": os.getloadavg()[0]},
        pyarrow=pyarrow.__version__,
        numpy=numpy.__version__,
        learn2learn_env=next((r["processes"][0]["versions"] for r in l2l_rows if r), None),
        threads=THREADS,
        sources_sha256=data_sources(),
    )


def data_sources() -> dict[str, str]:
    """Which version of the data layer the figures belong to (it is under active development)."""
    return source_hashes(("sampler.py", "cache.py", "rng.py", "shardset.py"), under="metadist/data")


def fmt_rate(result: dict | None) -> str:
    return fmt_spread(result, "episodes_per_s", ",.0f")


def fmt_ratio(ratio: float | None, met: bool | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.1f}× ({'met' if met else 'missed'})"


def fmt_memory(result: dict | None) -> str:
    if result is None:
        return "not run"
    m = result["memory_mb"]
    return f"{m['peak_rss']:.0f} / {m['rss_anon']:.0f} ({result['memory_before_mb']['rss']:.0f})"


def speed_table(rows: list[dict]) -> str:
    header = ["Episodes (1-shot, 5 queries)", "learn2learn", "metadist, 1 per call", "speed-up",
              f"metadist, {META_BATCH} per call", "speed-up", "target"]
    return markdown_table(
        header,
        [
            [r["name"], fmt_rate(r["learn2learn"]),
             fmt_rate(r["metadist_1"]), fmt_ratio(r["speedup_metadist_1"], r["target_met_metadist_1"]),
             fmt_rate(r["metadist_32"]), fmt_ratio(r["speedup_metadist_32"], r["target_met_metadist_32"]),
             f"≥ {r['target_speedup']:g}×"]
            for r in rows
        ],
    )


def memory_table(rows: list[dict]) -> str:
    header = ["Episodes (1-shot, 5 queries)", *(label for _, label in SIDES)]
    return markdown_table(header, [[r["name"], *(fmt_memory(r[key]) for key, _ in SIDES)] for r in rows])


def scale_table(rows: list[dict]) -> str:
    header = ["Shard set", "classes", "shards", "cache slots", "classes loaded", "episodes/s", "peak RSS (MiB)", "RssAnon (MiB)"]
    return markdown_table(
        header,
        [
            [f"small1 × {r['factor']}", f"{r['classes']:,}", str(r["shards"]), str(r["cache_slots"]),
             f"{r['classes_loaded']:,}", f"{r['episodes_per_s']:,.0f}",
             f"{r['memory_mb']['peak_rss']:.0f}", f"{r['memory_mb']['rss_anon']:.0f}"]
            for r in rows
        ],
    )


def targets_summary(report: dict) -> list[str]:
    lines = []
    for rotations, target in ((True, 20), (False, 2)):
        rows = [r for r in report["speed"] if r["episodes"]["rotations"] == rotations]
        for key, label in SIDES[1:]:
            what = f"≥ {target}× learn2learn {'with' if rotations else 'without'} rotations, {label}"
            if any(r[f"speedup_{key}"] is None for r in rows):
                lines.append(f"- {what}: not evaluated (learn2learn side skipped)")
                continue
            figures = ", ".join(f"{r['episodes']['ways']}-way {r[f'speedup_{key}']:.1f}×" for r in rows)
            verdict = "met" if all(r[f"target_met_{key}"] for r in rows) else "missed"
            lines.append(f"- {what}: **{verdict}** ({figures})")
    flat = report["scale"]["verdict"]
    lines.append(
        f"- Peak memory flat with a 10× larger shard set (peak RSS at most {flat['tolerance_mb']:g} MiB above the "
        f"1× set's): **{'met' if flat['flat'] else 'missed'}** (peak RSS {flat['growth_mb']['peak_rss']:+.1f} MiB, "
        f"RssAnon {flat['growth_mb']['rss_anon']:+.1f} MiB)"
    )
    return lines


def flagged_processes(report: dict) -> tuple[list[str], list[str]]:
    """(figures with a contended timed run, figures with a process that page-faulted on every call)."""
    contended, faulting = [], []
    for row in report["speed"]:
        for key, label in SIDES:
            if row[key] is None:
                continue
            runs = row[key]["processes"]
            slow = [c for r in runs for c in r["cpu_per_wall"] if c < CONTENDED_CPU_PER_WALL]
            if slow:
                contended.append(f"{row['name']}, {label} (CPU/wall {min(slow):.2f})")
            faults = [f for r in runs for f in r["minor_faults_per_call"]]
            if max(faults) > FAULTING_PER_CALL:
                faulting.append(f"{row['name']}, {label} ({sum(f > FAULTING_PER_CALL for f in faults)} of {len(faults)} runs)")
    contended += [f"shard set × {r['factor']}" for r in report["scale"]["rows"] if r["cpu_per_wall"] < CONTENDED_CPU_PER_WALL]
    return contended, faulting


def notes(report: dict) -> list[str]:
    rows = {(r["episodes"]["ways"], r["episodes"]["rotations"]): r for r in report["speed"]}
    lines = []
    if rows[(5, True)]["learn2learn"] and rows[(20, False)]["learn2learn"]:
        lines.append(
            f"- learn2learn measured here: {rows[(5, True)]['learn2learn']['episodes_per_s']:,.0f} episodes/s 5-way with "
            f"rotations and {rows[(20, False)]['learn2learn']['episodes_per_s']:,.0f} 20-way without; the issue measured "
            "about 184 and 1,800 on another machine. The speed-ups above divide medians from this run only."
        )
    contended, faulting = flagged_processes(report)
    lines.append(
        f"- Timed runs during which other processes took the core (CPU time / wall time below {CONTENDED_CPU_PER_WALL}): "
        + ("; ".join(contended) if contended else "none")
        + f". 1-minute load average at the end: {report['machine']['load_average_1min_at_end']:.2f}."
    )
    if faulting:
        lines.append(
            f"- Timed runs with more than {FAULTING_PER_CALL} minor page faults per call: " + "; ".join(faulting) + ". "
            "In such a process the C heap hands the batch's freed memory back to the OS after each call and "
            "maps it in again on the next, which is why the range between processes is wide."
        )
    if any(p["pandas_imported"] for r in report["speed"] for p in r["metadist_1"]["processes"]):
        lines.append(
            "- metadist's RSS before the first episode is the interpreter, torch, pyarrow and metadist. About 30 MiB "
            "more comes with the first class read from a shard: pyarrow's `to_numpy()` imports pandas."
        )
    if report["sources_changed_during_run"]:
        lines.append("- metadist's data-layer sources changed while this ran: the figures mix two versions; run it again.")
    lines += [
        "- learn2learn's `sample()` returns one tensor of N·(K+Q) images and their labels; metadist's `sample()` also "
        "splits support from query and converts uint8 pixels to float32.",
        "- learn2learn's `RandomClassRotation` rotates each image tensor with torchvision's `RandomRotation` (an affine "
        "resampling); metadist turns pixels with `torch.rot90`. In learn2learn 0.2.0 every image of an episode gets "
        "the rotation drawn for its last class (the transform's lambda reads its loop variable late); this does not "
        "change its cost.",
    ]
    return lines


def doc_section(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    return render(
        "data_sampler", command=COMMAND, date=m["date"][:10], cores=m["cores"], cpu=m["cpu"], python=m["python"],
        torch=m["torch"], pyarrow=m["pyarrow"], numpy=m["numpy"], l2l_line=l2l_line(m["learn2learn_env"]),
        sources=fmt_sources(m["sources_sha256"]), threads=m["threads"], speed_cache_mb=SPEED_CACHE_MB,
        meta_batch=META_BATCH, processes=s["processes"], warmup_s=s["warmup_s"], seconds=s["seconds"],
        runs=f"{s['repeats']} timed run" + ("s" if s["repeats"] != 1 else ""),
        speed_table=speed_table(report["speed"]), memory_table=memory_table(report["speed"]),
        scale_shard_mb=SCALE_SHARD_MB, scale_tasks_per_call=SCALE_TASKS_PER_CALL, scale_episodes=SCALE_EPISODES,
        scale_cache_mb=SCALE_CACHE_MB, scale_table=scale_table(report["scale"]["rows"]),
        targets="\n".join(targets_summary(report)), notes="\n".join(notes(report)),
    )


# -- entry point ----------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_l2l_argument(parser)
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per figure (default 3)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per process (default 1)")
    parser.add_argument("--seconds", type=float, default=1.0, help="least length of a timed run (default 1)")
    parser.add_argument("--warmup-s", type=float, default=0.5, help="untimed sampling first (default 0.5)")
    add_output_arguments(parser, RESULTS_PATH)
    # Internal: a worker process for one measurement.
    parser.add_argument("--worker", choices=("speed", "scale"), help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--ways", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rotations", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tasks-per-call", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        {"speed": worker_speed, "scale": worker_scale}[args.worker](args)
        return
    started, sources = time.perf_counter(), data_sources()
    l2l_python = resolve_l2l_python(args.l2l_python)
    uri = small1_uri()
    with tempfile.TemporaryDirectory(prefix="metadist-bench-") as tmp:
        images = extract_bundled("omniglot-small1", Path(tmp)) if l2l_python else None
        print(f"episodes per second, median (range) of {args.processes} fresh processes:", file=sys.stderr)
        speed = [speed_row(episodes, uri, images, l2l_python, args) for episodes in CONFIGS]
        print("10× shard set:", file=sys.stderr)
        scale = scale_rows(uri, Path(tmp))
    report = {
        "command": COMMAND,
        "machine": machine([r["learn2learn"] for r in speed]),
        "settings": {
            "processes": args.processes, "repeats": args.repeats, "seconds": args.seconds, "warmup_s": args.warmup_s,
            "seed": SEED, "meta_batch": META_BATCH, "speed_cache_mb": SPEED_CACHE_MB, "learn2learn_python": l2l_python,
            "scale": {"shard_mb": SCALE_SHARD_MB, "cache_mb": SCALE_CACHE_MB, "episodes": SCALE_EPISODES,
                      "tasks_per_call": SCALE_TASKS_PER_CALL},
        },
        "speed": speed,
        "scale": {"rows": scale, "verdict": flat_verdict(scale)},
    }
    report["elapsed_s"] = time.perf_counter() - started
    report["sources_changed_during_run"] = sources != report["machine"]["sources_sha256"]
    publish(report, args.results, doc_section(report), DOC_SECTION, args.doc)


if __name__ == "__main__":
    main()
