"""Sampling at 84 pixels, side by side with learn2learn: episodes per second of metadist's EpisodeSampler on a shard
set of 20,000 RGB images, against learn2learn 0.2.0's TaskDataset over the same images as an image folder.

Run (about 3 minutes on 2 cores; a quiet machine):

    .venv/bin/python bench/sampler_84px.py

The images: 100 classes × 200 synthetic 84×84 RGB JPEGs (smooth random colour fields, about 2-3 KB each, as
mini-ImageNet's 84-pixel copies are JPEGs of that size), written as `<root>/<class>/<image>.jpg`. metadist imports
the folder once (`metadist data import folder ROOT --out SHARDS`, timed: decoding happens there, once) and samples
episodes from the shards; learn2learn samples from torchvision's ImageFolder over the same files with its own
task transforms (NWays, KShots, LoadData, RemapLabels, ConsecutiveLabels; bench/_l2l_sampler_84px.py, under the
learn2learn virtualenv), each image decoded from its JPEG when a task draws it, as ImageFolder does. Episodes:
5-way 1-shot, 15 queries per class, no augmentation; one thread on both sides (torch.set_num_threads(1)); each side
in a fresh process, after a warm-up (metadist's warm-up fills its class cache, which holds the whole set).
metadist is measured one episode per call (learn2learn's unit of work) and four per call (a meta-batch of 4, how
the trainer calls it).

Targets (issue 16): ≥ 20× learn2learn's episodes/s, and sampling ≤ 2% of a ResNet-12 training step. The step time
is read from bench/results/backbone_speed.json (ProtoNet on ResNet-12, 4 tasks per step, this machine), the
cheapest of its learners.

Output: a table on stdout, bench/results/sampler_84px.json and the section "## Data layer: sampling at 84 pixels
against learn2learn" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BENCH_DIR, REPO
from common.docs import markdown_table, replace_section
from common.measure import measure_rate, memory_mb
from common.peers import add_l2l_argument, resolve_l2l_python
from common.results import add_output_arguments, emit, load_json, machine_info, results_path, run_worker, worker_env, write_json

RESULTS_PATH = results_path("sampler_84px")
HEADING = "## Data layer: sampling at 84 pixels against learn2learn"
COMMAND = ".venv/bin/python bench/sampler_84px.py"
WAYS, SHOTS, QUERIES, META_BATCH = 5, 1, 15, 4
SPEED_TARGET, SHARE_TARGET = 20.0, 0.02


def write_images(root: Path, classes: int, per_class: int, side: int = 84) -> int:
    """`classes` folders of `per_class` JPEGs; the bytes written."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    written = 0
    for c in range(classes):
        folder = root / f"n{c:05d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((side, side), Image.Resampling.BILINEAR)
            path = folder / f"{c:05d}_{i:04d}.jpg"
            image.save(path, quality=90)
            written += path.stat().st_size
    return written


def metadist_side(shards: str, per_call: int, seconds: float, repeats: int, warmup_s: float) -> None:
    """In this (fresh) process: episodes/s of the EpisodeSampler; prints the result line."""
    import torch

    from metadist.config import EpisodeConfig
    from metadist.data import EpisodeSampler, ShardSet
    from metadist.runtime import configure_process

    configure_process(1)
    torch.set_num_threads(1)
    sampler = EpisodeSampler(ShardSet(shards), EpisodeConfig(ways=WAYS, shots=SHOTS, queries=QUERIES, rotations=False),
                             seed=0, cache_mb=1024)
    step = iter(range(10**9))
    tasks = range(per_call)
    rate = measure_rate(lambda: sampler.sample(next(step), tasks), per_call, seconds=seconds, repeats=repeats,
                        warmup_s=warmup_s)
    emit({**rate, **memory_mb(), "per_call": per_call})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0, help="each timed run lasts at least this long")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-s", type=float, default=20.0, help="untimed sampling first (metadist: fills the cache)")
    parser.add_argument("--side", choices=("metadist",), help=argparse.SUPPRESS)  # a worker process
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--per-call", type=int, default=1, help=argparse.SUPPRESS)
    add_l2l_argument(parser, "learn2learn's interpreter")
    add_output_arguments(parser, RESULTS_PATH)
    args = parser.parse_args()
    if args.side:
        metadist_side(args.shards, args.per_call, args.seconds, args.repeats, args.warmup_s)
        return
    l2l_python = resolve_l2l_python(args.l2l_python)
    load_before = os.getloadavg()[0]
    timing = ["--seconds", str(args.seconds), "--repeats", str(args.repeats), "--warmup-s", str(args.warmup_s)]
    with tempfile.TemporaryDirectory() as tmp:
        root, shards = Path(tmp) / "images", Path(tmp) / "shards"
        started = time.perf_counter()
        jpeg_bytes = write_images(root, args.classes, args.per_class)
        print(f"wrote {args.classes * args.per_class} JPEGs ({jpeg_bytes / 2**20:.0f} MiB) in {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)
        started = time.perf_counter()
        subprocess.run([str(REPO / ".venv/bin/metadist"), "data", "import", "folder", str(root), "--out", str(shards)],
                       check=True, stdout=subprocess.DEVNULL, env=worker_env(1))
        import_s = time.perf_counter() - started
        print(f"imported in {import_s:.1f} s", file=sys.stderr, flush=True)
        ours = {}
        for per_call in (1, META_BATCH):
            ours[per_call] = run_worker([sys.executable, str(BENCH_DIR / "sampler_84px.py"), "--side", "metadist",
                                         "--shards", str(shards), "--per-call", str(per_call), *timing], env=worker_env(1))
            print(f"metadist, {per_call} per call:", ours[per_call], file=sys.stderr, flush=True)
        theirs = None
        if l2l_python is not None:
            theirs = run_worker([l2l_python, str(BENCH_DIR / "_l2l_sampler_84px.py"), "--images", str(root),
                                 "--ways", str(WAYS), "--shots", str(SHOTS), "--queries", str(QUERIES), *timing],
                                env=worker_env(1), cwd=BENCH_DIR)
            print("learn2learn:", theirs, file=sys.stderr, flush=True)

    def median(result: dict) -> float:
        values = sorted(result["episodes_per_s"])
        return values[len(values) // 2]

    backbone = load_json(results_path("backbone_speed"), {})
    protonet = next((r for r in backbone.get("rows", []) if r["learner"] == "protonet"), None)
    step_s = META_BATCH / protonet["metadist"]["tasks_per_s"] if protonet else None
    sample_s = META_BATCH / median(ours[META_BATCH])
    report = {
        "machine": machine_info(load={"load_average_1min": [load_before, os.getloadavg()[0]]}), "command": COMMAND,
        "images": args.classes * args.per_class, "jpeg_bytes": jpeg_bytes, "import_s": import_s,
        "metadist": {str(k): v for k, v in ours.items()}, "learn2learn": theirs,
        "speed_ratio": median(ours[1]) / median(theirs) if theirs else None,
        "resnet12_step_s": step_s, "sample_s_per_step": sample_s,
        "sampling_share": sample_s / step_s if step_s else None,
    }
    write_json(args.results, report)
    rows = [["metadist, 1 episode per call", f"{median(ours[1]):,.0f}", f"{ours[1]['peak_rss']:,.0f}"],
            [f"metadist, {META_BATCH} episodes per call", f"{median(ours[META_BATCH]):,.0f}", f"{ours[META_BATCH]['peak_rss']:,.0f}"]]
    if theirs:
        rows.append(["learn2learn TaskDataset over ImageFolder", f"{median(theirs):,.1f}", f"{theirs['peak_rss']:,.0f}"])
    ratio = report["speed_ratio"]
    share = report["sampling_share"]
    verdict = (
        (f"metadist samples {ratio:,.0f}× learn2learn's episodes/s (target ≥ {SPEED_TARGET:.0f}×: "
         f"{'met' if ratio >= SPEED_TARGET else 'not met'}). " if ratio else "learn2learn was not run. ")
        + (f"Sampling a meta-batch of {META_BATCH} takes {sample_s * 1e3:.1f} ms, {100 * share:.3f}% of a ResNet-12 ProtoNet "
           f"step of {step_s:.1f} s on this machine (bench/results/backbone_speed.json; target ≤ {100 * SHARE_TARGET:.0f}%: "
           f"{'met' if share <= SHARE_TARGET else 'not met'})." if share is not None else "")
    )
    info = report["machine"]
    section = (
        f"{HEADING}\n\n`{COMMAND}` ({info['date'][:10]}; {info['cores']} CPUs, 1 thread per side; 1-minute load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after). {args.classes * args.per_class:,} synthetic 84×84 RGB "
        f"JPEGs ({args.classes} classes × {args.per_class}, {jpeg_bytes / 2**20:.0f} MiB), imported into shards in "
        f"{import_s:.0f} s (decoded and resized once, there). {WAYS}-way {SHOTS}-shot, {QUERIES} queries per class, no "
        f"augmentation; median of {args.repeats} timed runs of at least {args.seconds:g} s after {args.warmup_s:g} s of "
        "warm-up, each side in a fresh process. learn2learn 0.2.0 samples with its task transforms over torchvision's "
        "ImageFolder, decoding each JPEG a task draws (bench/_l2l_sampler_84px.py). Raw figures: "
        "`bench/results/sampler_84px.json`.\n\n"
        + markdown_table(["sampler", "episodes/s", "peak RSS (MiB)"], rows, align="lrr") + "\n\n" + verdict + "\n"
    )
    if args.doc is not None:
        replace_section(args.doc, HEADING, section)
    print(section)


if __name__ == "__main__":
    main()
