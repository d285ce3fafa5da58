"""The learn2learn side of bench/data_sampler.py: time learn2learn 0.2.0's TaskDataset.sample() on Omniglot.

Run by bench/data_sampler.py under the learn2learn virtualenv (its interpreter, not metadist's), one process
per episode configuration, so that the peak RSS it reports belongs to that configuration alone:

    /tmp/l2l-venv/bin/python bench/_l2l_sampler.py --images DIR --ways 5 --shots 1 --queries 5 --rotations

DIR is an extracted images_background_small1 (<alphabet>/<character>/<drawing>.png). Every drawing is loaded
into memory with metadist's Omniglot preprocessing (grey, 28×28 LANCZOS, inverted, x / 255 as float32
[1, 28, 28]), wrapped in l2l.data.MetaDataset, and sampled through the transforms of learn2learn's own Omniglot
benchmark (learn2learn/vision/benchmarks/omniglot_benchmark.py): NWays, KShots(K + Q), LoadData, RemapLabels,
ConsecutiveLabels and, with --rotations, RandomClassRotation by 0/90/180/270 degrees. Prints one result line
(common.results.emit); the timing and memory helpers are bench/common's, which imports only the standard library.
Also the learn2learn-side helpers the other bench/_l2l_*.py scripts share: load_omniglot, taskset,
support_query_masks.
"""

from __future__ import annotations

import argparse
import random
import time
import warnings
from pathlib import Path

from common.measure import measure_rate, memory_mb
from common.results import emit

ROTATION_DEGREES = [0.0, 90.0, 180.0, 270.0]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, type=Path, help="extracted images_background_small1 folder")
    parser.add_argument("--ways", type=int, required=True)
    parser.add_argument("--shots", type=int, required=True)
    parser.add_argument("--queries", type=int, required=True)
    parser.add_argument("--rotations", action="store_true")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each timed repeat")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup-s", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def load_omniglot(root: Path, torch):
    """(image tensors [1, 28, 28] float32, labels), one label per character, characters in sorted order."""
    import numpy as np
    from PIL import Image

    characters = sorted(p for p in root.glob("*/*") if p.is_dir())
    if not characters:
        raise FileNotFoundError(f"{root}: no <alphabet>/<character> folders")
    images, labels = [], []
    for label, character in enumerate(characters):
        for png in sorted(character.glob("*.png")):
            with Image.open(png) as image:
                grey = image.convert("L").resize((28, 28), Image.Resampling.LANCZOS)
            pixels = 255 - np.asarray(grey, dtype=np.uint8)
            images.append(torch.from_numpy(pixels.astype(np.float32) / 255)[None])
            labels.append(label)
    return images, labels


def taskset(images, labels, torch, l2l, *, ways: int, k: int, rotations: bool, fused: bool = True):
    """learn2learn's TaskDataset over the images load_omniglot returns (a MetaDataset of them in memory), with the
    transforms of its Omniglot benchmark: `ways` classes of `k` examples (FusedNWaysKShots, or NWays then KShots),
    LoadData, RemapLabels, ConsecutiveLabels and, with `rotations`, RandomClassRotation by ROTATION_DEGREES."""

    class InMemoryOmniglot(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, index):
            return images[index], labels[index]

    dataset = l2l.data.MetaDataset(InMemoryOmniglot())
    if fused:
        transforms = [l2l.data.transforms.FusedNWaysKShots(dataset, n=ways, k=k)]
    else:
        transforms = [l2l.data.transforms.NWays(dataset, n=ways), l2l.data.transforms.KShots(dataset, k=k)]
    transforms += [
        l2l.data.transforms.LoadData(dataset),
        l2l.data.transforms.RemapLabels(dataset),
        l2l.data.transforms.ConsecutiveLabels(dataset),
    ]
    if rotations:
        transforms.append(l2l.vision.transforms.RandomClassRotation(dataset, ROTATION_DEGREES))
    return l2l.data.TaskDataset(dataset, transforms, num_tasks=-1)


def support_query_masks(ways: int, shots: int, queries: int, np, torch):
    """Support / query masks of an episode as maml_omniglot.py splits it (ConsecutiveLabels puts each class's
    shots + queries examples together)."""
    per_class = shots + queries
    is_support = np.zeros(ways * per_class, dtype=bool)
    is_support[np.arange(ways)[:, None] * per_class + np.arange(shots)] = True
    return torch.from_numpy(is_support), torch.from_numpy(~is_support)


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore")  # learn2learn's imports warn about gym and torchvision versions
    import torch
    import torchvision
    import learn2learn as l2l

    torch.set_num_threads(args.threads)
    random.seed(args.seed)  # learn2learn draws classes, shots and rotations from Python's random
    started = time.perf_counter()
    images, labels = load_omniglot(args.images, torch)
    tasks = taskset(images, labels, torch, l2l, ways=args.ways, k=args.shots + args.queries, rotations=args.rotations, fused=False)
    setup_s = time.perf_counter() - started
    memory_before = memory_mb()
    data, _ = tasks.sample()
    n_examples = args.ways * (args.shots + args.queries)
    if tuple(data.shape) != (n_examples, 1, 28, 28):
        raise RuntimeError(f"learn2learn episode has shape {tuple(data.shape)}, expected ({n_examples}, 1, 28, 28)")
    rate = measure_rate(tasks.sample, 1, seconds=args.seconds, repeats=args.repeats, warmup_s=args.warmup_s)
    emit(
        {
            **rate,
            "setup_s": setup_s,
            "images": len(images),
            "classes": len(set(labels)),
            "memory_before_mb": memory_before,
            "memory_mb": memory_mb(),
            "threads": torch.get_num_threads(),
            "versions": {"learn2learn": l2l.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__},
        }
    )


if __name__ == "__main__":
    main()
