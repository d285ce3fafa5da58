"""The learn2learn side of bench/sampler_84px.py: learn2learn 0.2.0's TaskDataset over an image folder of 84-pixel
JPEGs, sampled with its task transforms (NWays, KShots, LoadData, RemapLabels, ConsecutiveLabels).

Run by bench/sampler_84px.py under the learn2learn virtualenv, in a fresh process:

    /tmp/l2l-venv/bin/python bench/_l2l_sampler_84px.py --images DIR --ways 5 --shots 1 --queries 15

DIR is `<class>/<image>.jpg`. torchvision's ImageFolder opens and decodes each image a task draws (RGB, then a
float tensor), as a learn2learn user's folder-backed data set does. Prints one result line (common.results.emit).
"""

from __future__ import annotations

import argparse
import random
import time
import warnings
from pathlib import Path

from common.measure import measure_rate, memory_mb
from common.results import emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, type=Path, help="<class>/<image>.jpg")
    parser.add_argument("--ways", type=int, required=True)
    parser.add_argument("--shots", type=int, required=True)
    parser.add_argument("--queries", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # learn2learn's imports warn about gym and torchvision versions
    import learn2learn as l2l
    import torch
    import torchvision

    torch.set_num_threads(1)
    random.seed(0)  # learn2learn draws classes and shots from Python's random
    started = time.perf_counter()
    folder = torchvision.datasets.ImageFolder(str(args.images), transform=torchvision.transforms.ToTensor())
    dataset = l2l.data.MetaDataset(folder)
    tasks = l2l.data.TaskDataset(dataset, [
        l2l.data.transforms.NWays(dataset, n=args.ways),
        l2l.data.transforms.KShots(dataset, k=args.shots + args.queries),
        l2l.data.transforms.LoadData(dataset),
        l2l.data.transforms.RemapLabels(dataset),
        l2l.data.transforms.ConsecutiveLabels(dataset),
    ], num_tasks=-1)
    setup_s = time.perf_counter() - started
    data, _ = tasks.sample()
    expected = (args.ways * (args.shots + args.queries), 3, 84, 84)
    if tuple(data.shape) != expected:
        raise RuntimeError(f"learn2learn episode has shape {tuple(data.shape)}, expected {expected}")
    rate = measure_rate(tasks.sample, 1, seconds=args.seconds, repeats=args.repeats, warmup_s=args.warmup_s)
    emit({**rate, **memory_mb(), "setup_s": setup_s, "images": len(folder),
          "versions": {"learn2learn": l2l.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__}})


if __name__ == "__main__":
    main()
