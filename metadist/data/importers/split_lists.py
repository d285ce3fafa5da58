"""The benchmarks' canonical class splits, shipped as data files in `splits/` (each names its source at the top)."""

from __future__ import annotations

import gzip
from functools import cache
from importlib import resources

SPLITS = ("train", "val", "test")  # the order splits are listed, imported and reported in


def _rows(name: str) -> list[list[str]]:
    data = resources.files("metadist.data.importers").joinpath("splits", name).read_bytes()
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    return [line.split() for line in data.decode("utf-8").splitlines() if line.strip() and not line.startswith("#")]


@cache
def split_classes(benchmark: str) -> dict[str, tuple[tuple[str, ...], ...]]:
    """split → its classes as rows of the data file after the split column, in the file's order.

    mini-imagenet: (wnid,); tiered-imagenet: (wnid, category wnid); cifar-fs: (fine label, coarse label);
    fc100: (coarse label,); cub: (class folder,).
    """
    by_split: dict[str, list[tuple[str, ...]]] = {split: [] for split in SPLITS}
    for split, *rest in _rows(f"{benchmark.replace('-', '_')}.txt"):
        by_split[split].append(tuple(rest))
    return {split: tuple(rows) for split, rows in by_split.items()}


@cache
def mini_imagenet_images() -> dict[str, tuple[int, ...]]:
    """wnid → Ravi & Larochelle's 600 images of it, as 1-based positions among its ILSVRC2012 train images sorted by
    number (their file n0153282900000005.jpg is position 5 of n01532829)."""
    return {wnid: tuple(int(p) for p in positions) for wnid, *positions in _rows("mini_imagenet_images.txt.gz")}
