"""Data-layer benchmark: episodes per second and peak memory of metadist's EpisodeSampler, side by side with
learn2learn 0.2.0's TaskDataset on the same Omniglot images (images_background_small1: 136 characters × 20).

Run (about 3 minutes on 2 cores):

    .venv/bin/python bench/data_sampler.py          # or: make bench-data

What it measures, for 5-way and 20-way 1-shot episodes with 5 queries per class, with and without rotation
classes (each in a fresh process, torch.set_num_threads(1) on both sides):
  * metadist, one episode per call, sampler.sample(step, [0]): the unit of work of learn2learn's sample();
  * metadist, a meta-batch of 32 episodes per call, sampler.sample(step, range(32)): how the trainer calls it;
  * learn2learn, TaskDataset(...).sample() with the transforms of its own Omniglot benchmark (bench/_l2l_sampler.py,
    run under the learn2learn virtualenv given by --l2l-python, $L2L_PYTHON or /tmp/l2l-venv/bin/python).
  Episodes/s is the median of --repeats timed repeats of at least --seconds each, after a warm-up. Memory is the
  sampling process's peak RSS (VmHWM) and its RssAnon when done, from /proc/self/status.
And whether peak memory stays flat when the shard set is 10× larger: small1 is written once (1×) and ten times
under different class names (10×) in small shards, then each set is sampled (5-way 1-shot 5-query, rotations,
16 episodes per call) in a fresh process with the same cache budget, smaller than either set.

Output: a table on stdout, bench/results/data_sampler.json, and the section "## Data layer: episode sampling"
of docs/benchmarks.md (only that section is replaced).

The module's top level imports only the standard library: bench/_l2l_sampler.py runs under learn2learn's
virtualenv and imports the timing and memory helpers from here. metadist is imported inside functions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_PATH = BENCH_DIR / "results" / "data_sampler.json"
DOC_PATH = REPO / "docs" / "benchmarks.md"
DOC_SECTION = "## Data layer: episode sampling"
COMMAND = ".venv/bin/python bench/data_sampler.py"
SETUP_L2L = "../shared/peers/setup-learn2learn.sh"  # from the repository root
RESULT_MARK = "@@bench-result "  # prefixes the one JSON line a worker process prints

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
CONTENDED_CPU_PER_WALL = 0.9  # below this, other processes took the core for part of a timed repeat


@dataclass(frozen=True)
class Episodes:
    ways: int
    rotations: bool
    shots: int = SHOTS
    queries: int = QUERIES

    @property
    def name(self) -> str:
        return f"{self.ways}-way {self.shots}-shot {self.queries}q, " + ("rotations" if self.rotations else "no rotations")

    @property
    def target(self) -> float:
        """Required speed-up over learn2learn (the issue: ≥ 20× with rotation classes, ≥ 2× without)."""
        return 20.0 if self.rotations else 2.0


CONFIGS = (Episodes(5, True), Episodes(5, False), Episodes(20, True), Episodes(20, False))


# -- helpers shared with bench/_l2l_sampler.py (standard library only) -------------------------------------------
def memory_mb() -> dict[str, float]:
    """This process's VmHWM (peak RSS), VmRSS, RssAnon and RssFile in MiB, from /proc/self/status."""
    wanted = {"VmHWM": "peak_rss", "VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file"}
    out = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in wanted:
                out[wanted[key]] = int(value.split()[0]) / 1024  # kB → MiB
    return out


def measure_rate(
    sample_once: Callable[[], object], episodes_per_call: int, *, seconds: float, repeats: int, warmup_s: float
) -> dict:
    """Call sample_once for warmup_s untimed, then `repeats` times for at least `seconds` each; episodes/s.

    cpu_per_wall is this process's CPU time over wall time while timed: near 1 with one thread on an idle core,
    lower when other processes took the core away (the figure is then pessimistic).
    """
    run_for(sample_once, warmup_s)
    rates, cpu_per_wall = [], []
    for _ in range(repeats):
        calls, elapsed, cpu_s = run_for(sample_once, seconds)
        rates.append(calls * episodes_per_call / elapsed)
        cpu_per_wall.append(cpu_s / elapsed)
    return {
        "episodes_per_s": statistics.median(rates),
        "repeats_episodes_per_s": rates,
        "cpu_per_wall": statistics.median(cpu_per_wall),
    }


def run_for(fn: Callable[[], object], seconds: float) -> tuple[int, float, float]:
    """Call fn at least once and until `seconds` have passed; (calls, elapsed seconds, CPU seconds)."""
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls, elapsed, time.process_time() - cpu_start


def emit(result: dict) -> None:
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_worker(command: list[str]) -> dict:
    """Run a worker process and return the result it printed; its stderr is shown only if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed (exit {done.returncode}): {' '.join(command)}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


# -- metadist workers (run in fresh processes by the parent) -----------------------------------------------------
def worker_speed(args: argparse.Namespace) -> None:
    import torch

    from metadist.config import EpisodeConfig
    from metadist.data import EpisodeSampler, ShardSet

    torch.set_num_threads(THREADS)
    shape = EpisodeConfig(ways=args.ways, shots=SHOTS, queries=QUERIES, rotations=args.rotations)
    sampler = EpisodeSampler(ShardSet(args.uri), shape, seed=SEED, cache_mb=SPEED_CACHE_MB)
    tasks = list(range(args.tasks_per_call))
    steps = iter(range(10**12))
    memory_before = memory_mb()
    rate = measure_rate(
        lambda: sampler.sample(next(steps), tasks),
        len(tasks),
        seconds=args.seconds,
        repeats=args.repeats,
        warmup_s=args.warmup_s,
    )
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
    import torch

    from metadist.config import EpisodeConfig
    from metadist.data import EpisodeSampler, ShardSet

    torch.set_num_threads(THREADS)
    shards = ShardSet(args.uri)
    shape = EpisodeConfig(ways=5, shots=SHOTS, queries=QUERIES, rotations=True)
    sampler = EpisodeSampler(shards, shape, seed=SEED, cache_mb=SCALE_CACHE_MB)
    tasks = list(range(SCALE_TASKS_PER_CALL))
    memory_before = memory_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(SCALE_EPISODES // len(tasks)):
        sampler.sample(step, tasks)
    elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
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
            "pandas_imported": "pandas" in sys.modules,
        }
    )


# -- the parent: data preparation -----------------------------------------------------------------------------
def small1_uri() -> str:
    from metadist.data import resolve_uri

    return resolve_uri("bundled://omniglot-small1", progress=False)


def extract_small1(into: Path) -> Path:
    """The bundled small1 zip (the images metadist's shard set was imported from), extracted for learn2learn."""
    from metadist.data.bundled import BUNDLED_ZIPS, bundled_file

    with zipfile.ZipFile(bundled_file(BUNDLED_ZIPS["omniglot-small1"])) as archive:
        archive.extractall(into)
    return into / "images_background_small1"


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
                writer.add_class(name, group=f"copy{copy}/{info.group}", examples=pixels, sources=[f"{name}/{i}" for i in range(len(pixels))])
    return str(out)


def resolve_l2l_python(path: str) -> str | None:
    if os.access(path, os.X_OK):
        return path
    print(
        f"learn2learn side SKIPPED: no interpreter at {path}.\n"
        f"  Build it with {SETUP_L2L} [VENV_DIR] (from the repository root, about 2 minutes), then pass "
        "--l2l-python VENV_DIR/bin/python or set L2L_PYTHON.",
        file=sys.stderr,
    )
    return None


# -- the parent: runs ---------------------------------------------------------------------------------------------
def timing_flags(args: argparse.Namespace) -> list[str]:
    return ["--seconds", str(args.seconds), "--repeats", str(args.repeats), "--warmup-s", str(args.warmup_s)]


def run_metadist(uri: str, episodes: Episodes, tasks_per_call: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", "speed", "--uri", uri, "--ways", str(episodes.ways)]
    command += ["--tasks-per-call", str(tasks_per_call), *timing_flags(args)]
    return run_worker(command + (["--rotations"] if episodes.rotations else []))


def run_l2l(l2l_python: str, images: Path, episodes: Episodes, args: argparse.Namespace) -> dict:
    command = [l2l_python, str(BENCH_DIR / "_l2l_sampler.py"), "--images", str(images), "--ways", str(episodes.ways)]
    command += ["--shots", str(episodes.shots), "--queries", str(episodes.queries), "--threads", str(THREADS)]
    command += ["--seed", str(SEED), *timing_flags(args)]
    return run_worker(command + (["--rotations"] if episodes.rotations else []))


def run_scale(uri: str) -> dict:
    return run_worker([sys.executable, __file__, "--worker", "scale", "--uri", uri])


def speedup(metadist: dict, l2l: dict | None) -> float | None:
    return metadist["episodes_per_s"] / l2l["episodes_per_s"] if l2l else None


def speed_row(episodes: Episodes, uri: str, images: Path | None, l2l_python: str | None, args) -> dict:
    row = {"episodes": asdict(episodes), "name": episodes.name, "target_speedup": episodes.target}
    row["learn2learn"] = run_l2l(l2l_python, images, episodes, args) if l2l_python else None
    progress(episodes.name, "learn2learn", row["learn2learn"])
    for key, tasks_per_call in (("metadist_1", 1), ("metadist_32", META_BATCH)):
        row[key] = run_metadist(uri, episodes, tasks_per_call, args)
        progress(episodes.name, f"metadist {tasks_per_call}/call", row[key])
        ratio = speedup(row[key], row["learn2learn"])
        row[f"speedup_{key[9:]}"] = ratio
        row[f"target_met_{key[9:]}"] = None if ratio is None else ratio >= episodes.target
    return row


def scale_rows(base_uri: str, workdir: Path) -> list[dict]:
    rows = []
    for factor in SCALE_FACTORS:
        uri = write_scaled_set(base_uri, factor, workdir / f"small1-x{factor}")
        rows.append({"factor": factor, **run_scale(uri)})
        progress(f"shard set {factor}×", "metadist", rows[-1])
    return rows


def flat_verdict(rows: list[dict]) -> dict:
    small, large = (next(r for r in rows if r["factor"] == f)["memory_mb"] for f in SCALE_FACTORS)
    growth = {key: large[key] - small[key] for key in ("peak_rss", "rss_anon")}
    return {"growth_mb": growth, "tolerance_mb": FLAT_TOLERANCE_MB, "flat": growth["peak_rss"] <= FLAT_TOLERANCE_MB}


def contended(report: dict) -> list[str]:
    """The figures taken while other processes competed for the cores (CPU time / wall time below 0.9)."""
    found = []
    for row in report["speed"]:
        for key, label in (("learn2learn", "learn2learn"), ("metadist_1", "metadist 1/call"), ("metadist_32", "metadist 32/call")):
            if row[key] and row[key]["cpu_per_wall"] < CONTENDED_CPU_PER_WALL:
                found.append(f"{row['name']}, {label} ({row[key]['cpu_per_wall']:.2f})")
    for row in report["scale"]["rows"]:
        if row["cpu_per_wall"] < CONTENDED_CPU_PER_WALL:
            found.append(f"shard set × {row['factor']} ({row['cpu_per_wall']:.2f})")
    return found


def progress(what: str, side: str, result: dict | None) -> None:
    if result is None:
        print(f"  {what:<34} {side:<18} skipped", file=sys.stderr, flush=True)
        return
    figure = f"{result['episodes_per_s']:>9,.0f} episodes/s, CPU/wall {result['cpu_per_wall']:.2f}"
    print(f"  {what:<34} {side:<18} {figure}, peak RSS {result['memory_mb']['peak_rss']:.0f} MiB", file=sys.stderr, flush=True)


# -- the parent: report -------------------------------------------------------------------------------------------
def machine_info(l2l_rows: list[dict | None]) -> dict:
    import numpy
    import pyarrow
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    l2l_versions = next((r["versions"] for r in l2l_rows if r), None)
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_1min_at_end": os.getloadavg()[0],
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": numpy.__version__,
        "learn2learn_env": l2l_versions,
        "threads": THREADS,
        # The sampler is under active development: which code these figures belong to.
        "sources_sha256": {
            name: hashlib.sha256((REPO / "metadist" / "data" / name).read_bytes()).hexdigest()[:16]
            for name in ("sampler.py", "cache.py", "rng.py", "shardset.py")
        },
    }


def fmt_rate(result: dict | None) -> str:
    return "not run" if result is None else f"{result['episodes_per_s']:,.0f}"


def fmt_ratio(ratio: float | None, met: bool | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.1f}× ({'met' if met else 'missed'})"


def fmt_memory(result: dict | None) -> str:
    if result is None:
        return "not run"
    m = result["memory_mb"]
    return f"{m['peak_rss']:.0f} / {m['rss_anon']:.0f} ({result['memory_before_mb']['rss']:.0f})"


def speed_table(rows: list[dict]) -> str:
    lines = [
        "| Episodes (1-shot, 5 queries) | learn2learn | metadist, 1 per call | speed-up | metadist, 32 per call | speed-up | target |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['episodes']['ways']}-way, {'rotations' if r['episodes']['rotations'] else 'no rotations'} "
            f"| {fmt_rate(r['learn2learn'])} | {fmt_rate(r['metadist_1'])} | {fmt_ratio(r['speedup_1'], r['target_met_1'])} "
            f"| {fmt_rate(r['metadist_32'])} | {fmt_ratio(r['speedup_32'], r['target_met_32'])} | ≥ {r['target_speedup']:g}× |"
        )
    return "\n".join(lines)


def memory_table(rows: list[dict]) -> str:
    lines = [
        "| Episodes (1-shot, 5 queries) | learn2learn | metadist, 1 per call | metadist, 32 per call |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['episodes']['ways']}-way, {'rotations' if r['episodes']['rotations'] else 'no rotations'} "
            f"| {fmt_memory(r['learn2learn'])} | {fmt_memory(r['metadist_1'])} | {fmt_memory(r['metadist_32'])} |"
        )
    return "\n".join(lines)


def scale_table(rows: list[dict]) -> str:
    lines = [
        "| Shard set | classes | shards | cache slots | classes loaded | episodes/s | peak RSS (MiB) | RssAnon (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["memory_mb"]
        lines.append(
            f"| small1 × {r['factor']} | {r['classes']:,} | {r['shards']} | {r['cache_slots']} | {r['classes_loaded']:,} "
            f"| {r['episodes_per_s']:,.0f} | {m['peak_rss']:.0f} | {m['rss_anon']:.0f} |"
        )
    return "\n".join(lines)


def targets_summary(report: dict) -> list[str]:
    rows, flat = report["speed"], report["scale"]["verdict"]
    lines = []
    for rotations, target in ((True, 20), (False, 2)):
        for key, label in (("1", "1 episode per call"), ("32", f"{META_BATCH} episodes per call")):
            cells = [r for r in rows if r["episodes"]["rotations"] == rotations]
            if any(r[f"speedup_{key}"] is None for r in cells):
                lines.append(f"- ≥ {target}× learn2learn {'with' if rotations else 'without'} rotations, {label}: not evaluated (learn2learn side skipped)")
                continue
            parts = ", ".join(f"{r['episodes']['ways']}-way {r[f'speedup_{key}']:.1f}×" for r in cells)
            verdict = "met" if all(r[f"target_met_{key}"] for r in cells) else "missed"
            lines.append(f"- ≥ {target}× learn2learn {'with' if rotations else 'without'} rotations, {label}: **{verdict}** ({parts})")
    growth = flat["growth_mb"]
    lines.append(
        f"- Peak memory flat with a 10× larger shard set (peak RSS at most {flat['tolerance_mb']:g} MiB above the 1× set's): "
        f"**{'met' if flat['flat'] else 'missed'}** (peak RSS {growth['peak_rss']:+.1f} MiB, RssAnon {growth['rss_anon']:+.1f} MiB)"
    )
    return lines


def notes(report: dict) -> list[str]:
    rows = {(r["episodes"]["ways"], r["episodes"]["rotations"]): r for r in report["speed"]}
    lines = []
    if rows[(5, True)]["learn2learn"] and rows[(20, False)]["learn2learn"]:
        lines.append(
            f"- learn2learn measured here: {fmt_rate(rows[(5, True)]['learn2learn'])} episodes/s 5-way with rotations and "
            f"{fmt_rate(rows[(20, False)]['learn2learn'])} 20-way without; the issue measured about 184 and 1,800 on another "
            "machine. Speed-ups above use this run's figures only."
        )
    busy = contended(report)
    lines.append(
        f"- Figures taken while other processes competed for the cores (CPU time / wall time below {CONTENDED_CPU_PER_WALL}): "
        + ("; ".join(busy) if busy else "none")
        + f". 1-minute load average at the end: {report['machine']['load_average_1min_at_end']:.2f}."
    )
    if any(r["metadist_1"]["pandas_imported"] for r in report["speed"]):
        lines.append(
            "- metadist's RSS before the first episode is the interpreter, torch, pyarrow and metadist. About 30 MiB of "
            "the growth comes with the first class read from a shard: pyarrow's `to_numpy()` imports pandas."
        )
    lines += [
        "- learn2learn's `sample()` returns one tensor of N·(K+Q) images and their labels; metadist's `sample()` also "
        "splits support from query and converts uint8 pixels to float32.",
        "- learn2learn's `RandomClassRotation` rotates each image tensor with torchvision's `RandomRotation` (an affine "
        "resampling); metadist turns pixels with `torch.rot90`. In learn2learn 0.2.0 every image of an episode gets the "
        "rotation drawn for its last class (the transform's lambda reads its loop variable late); this does not change its cost.",
    ]
    return lines


def doc_section(report: dict) -> str:
    m = report["machine"]
    l2l = m["learn2learn_env"]
    l2l_line = (
        f"learn2learn {l2l['learn2learn']} with torch {l2l['torch']}, torchvision {l2l['torchvision']}"
        if l2l
        else "learn2learn side not run (no learn2learn virtualenv; build one with ../shared/peers/setup-learn2learn.sh)"
    )
    s = report["settings"]
    return f"""{DOC_SECTION}

`{COMMAND}` (or `make bench-data`) measured on {m['date'][:10]}: {m['cores']} cores ({m['cpu']}), Python {m['python']},
torch {m['torch']}, pyarrow {m['pyarrow']}, numpy {m['numpy']}; {l2l_line}. Raw figures: `bench/results/data_sampler.json`.

Both sides sample Omniglot images_background_small1 (136 characters × 20 drawings, 28×28, inverted, x / 255)
in one process with `torch.set_num_threads({m['threads']})`, each configuration in a fresh process.
learn2learn: `TaskDataset(MetaDataset(in-memory dataset), [NWays, KShots(K+Q), LoadData, RemapLabels,
ConsecutiveLabels(, RandomClassRotation 0/90/180/270°)], num_tasks=-1).sample()`, the transforms of its own Omniglot
benchmark, one episode per call. metadist: `EpisodeSampler(ShardSet(bundled://omniglot-small1), cache_mb={SPEED_CACHE_MB}).sample(step, tasks)`
with one task per call (the same unit of work) and with {META_BATCH} tasks per call (how the trainer calls it).
Episodes/s is the median of {s['repeats']} repeats of at least {s['seconds']:g} s after a {s['warmup_s']:g} s warm-up.

### Episodes per second

{speed_table(report['speed'])}

### Memory of the sampling process: peak RSS / RssAnon at the end (RSS before the first episode), MiB

{memory_table(report['speed'])}

learn2learn's process also holds torchvision and the 2,720 images as float32 tensors (8.5 MB of pixels).

### Peak memory with a 10× larger shard set

small1 written once and ten times over under different class names, in {SCALE_SHARD_MB:g} MB shards; each set sampled in
a fresh process, 5-way 1-shot 5-query episodes with rotations, {SCALE_TASKS_PER_CALL} per call, {SCALE_EPISODES:,} episodes,
`cache_mb={SCALE_CACHE_MB:g}` (smaller than either set's pixels, 2.1 MB and 21 MB), so both stream through the same arena.
Episodes/s here includes reading evicted classes back from the shards.

{scale_table(report['scale']['rows'])}

### Targets (from the issue), on the figures above

{chr(10).join(targets_summary(report))}

### Notes

{chr(10).join(notes(report))}
"""


def update_doc(path: Path, section: str) -> None:
    """Replace the section (up to the next '## ' heading) in `path`, or append it; create the file if missing."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = text.find(DOC_SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(DOC_SECTION))
        text = text[:start] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


# -- entry point --------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--l2l-python",
        default=os.environ.get("L2L_PYTHON", "/tmp/l2l-venv/bin/python"),
        help="interpreter of the learn2learn virtualenv (default: $L2L_PYTHON, else /tmp/l2l-venv/bin/python)",
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each timed repeat (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per figure; the median is reported")
    parser.add_argument("--warmup-s", type=float, default=0.5, help="untimed sampling before the repeats")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="JSON output")
    parser.add_argument("--doc", type=Path, default=DOC_PATH, help="Markdown file whose section is replaced")
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
    started = time.perf_counter()
    l2l_python = resolve_l2l_python(args.l2l_python)
    uri = small1_uri()
    with tempfile.TemporaryDirectory(prefix="metadist-bench-") as tmp:
        images = extract_small1(Path(tmp)) if l2l_python else None
        print("episodes per second (fresh process each):", file=sys.stderr)
        speed = [speed_row(episodes, uri, images, l2l_python, args) for episodes in CONFIGS]
        print("10× shard set:", file=sys.stderr)
        scale = scale_rows(uri, Path(tmp))
    report = {
        "command": COMMAND,
        "machine": machine_info([r["learn2learn"] for r in speed]),
        "settings": {"seconds": args.seconds, "repeats": args.repeats, "warmup_s": args.warmup_s, "seed": SEED,
                     "meta_batch": META_BATCH, "speed_cache_mb": SPEED_CACHE_MB, "learn2learn_python": l2l_python,
                     "scale": {"shard_mb": SCALE_SHARD_MB, "cache_mb": SCALE_CACHE_MB, "episodes": SCALE_EPISODES,
                               "tasks_per_call": SCALE_TASKS_PER_CALL}},
        "speed": speed,
        "scale": {"rows": scale, "verdict": None},
    }
    report["scale"]["verdict"] = flat_verdict(scale)
    report["elapsed_s"] = time.perf_counter() - started
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    section = doc_section(report)
    update_doc(args.doc, section)
    print(section)
    print(f"wrote {args.results} and the section {DOC_SECTION!r} of {args.doc} ({report['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
