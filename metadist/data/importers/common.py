"""What every image importer shares: decode classes in parallel and write them in a stable order."""

from __future__ import annotations

import os
import posixpath
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from metadist.data.images import ImagePreprocessing
from metadist.data.importers.tree import InputFile, InputTree
from metadist.data.manifest import Manifest
from metadist.data.uri import join
from metadist.data.writer import DEFAULT_SHARD_MB, ShardSetWriter
from metadist.errors import DataImportError


class ImportClass(Protocol):
    """One class to write: its name, group and example count, and how to get its examples."""

    @property
    def name(self) -> str: ...

    @property
    def group(self) -> str: ...

    @property
    def where(self) -> str:
        """How errors name the class's input."""
        ...

    @property
    def count(self) -> int: ...

    def load(self, preprocessing: ImagePreprocessing, store: str) -> tuple[Sequence, list[str]]:
        """The class's examples (uint8 [C, H, W] arrays, or encoded files when store="image") and their sources."""
        ...


@dataclass(frozen=True)
class ClassFiles:
    """A class whose examples are image files in a tree, read and decoded when it is written."""

    name: str
    group: str
    tree: InputTree
    files: tuple[InputFile, ...]

    @property
    def where(self) -> str:
        return self.tree.uri

    @property
    def count(self) -> int:
        return len(self.files)

    def load(self, preprocessing: ImagePreprocessing, store: str) -> tuple[Sequence, list[str]]:
        raw = [self.tree.read(f) for f in self.files]
        if store == "image":
            for data, f in zip(raw, self.files):  # each file must decode, even though it is stored encoded
                preprocessing.decode(data, source=f.where)
            return raw, [f.path for f in self.files]
        return [preprocessing.decode(data, source=f.where) for data, f in zip(raw, self.files)], [f.path for f in self.files]


@dataclass(frozen=True)
class ArrayClass:
    """A class whose examples `make` produces as uint8 [C, H, W] arrays (records of a binary file, decoded images)."""

    name: str
    group: str
    where: str
    count: int
    make: Callable[[ImagePreprocessing], tuple[list[np.ndarray], list[str]]]

    def load(self, preprocessing: ImagePreprocessing, store: str) -> tuple[Sequence, list[str]]:
        if store != "tensor":
            raise ValueError(f"class {self.name!r} has pixels, not image files: store must be 'tensor'")
        return self.make(preprocessing)


# Names under which community copies of the benchmarks ship as pickles; nothing here is ever unpickled.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pkl.gz", ".pickle.gz", ".pkl.zip")


def is_pickle_name(path: str) -> bool:
    return posixpath.basename(path.rstrip("/")).lower().endswith(PICKLE_SUFFIXES)


def refuse_pickle(where: str, instead: str) -> None:
    """A one-line DataImportError when `where` names a pickle: `instead` says which raw files to give."""
    if is_pickle_name(where):
        raise DataImportError(f"{where}: a pickle; metadist never unpickles data (it can run code): {instead}")


def split_uri(out: str, split: str) -> str:
    """Where a benchmark importer writes one split's shard set: <out>/<split> (train, val, test)."""
    return join(out, split)


def write_classes(
    classes: Sequence[ImportClass],
    out: str,
    *,
    dataset: dict,
    preprocessing: ImagePreprocessing,
    store: str = "tensor",
    file_format: str = "arrow",
    shard_mb: float = DEFAULT_SHARD_MB,
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> Manifest:
    """Write `classes` (already sorted) as a shard set at `out`; return its manifest.

    store="tensor" decodes and preprocesses every image now (fast sampling); store="image" keeps the encoded
    files and checks that each decodes, leaving preprocessing to load time.
    """
    if store not in ("tensor", "image"):
        raise ValueError(f"store must be 'tensor' or 'image', got {store!r}")
    seen: dict[str, str] = {}
    for c in classes:
        if c.name in seen:
            raise DataImportError(f"class {c.name!r} occurs in both {seen[c.name]} and {c.where}")
        seen[c.name] = c.where

    def load(c: ImportClass):
        return c, *c.load(preprocessing, store)

    total = sum(c.count for c in classes)
    with (
        ShardSetWriter(
            out,
            dataset=dataset,
            preprocessing=preprocessing.to_dict(),
            example_shape=preprocessing.shape,
            example_encoding=store,
            file_format=file_format,
            shard_mb=shard_mb,
            overwrite=overwrite,
            storage_options=storage_options,
        ) as writer,
        ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
        tqdm(total=total, desc=desc or f"import {dataset.get('name', '')}", unit="img", disable=not progress) as bar,
    ):
        # Results are taken in submission order, so shards are identical however threads interleave; at most
        # `window` classes are decoded ahead, so memory does not grow with the size of the input.
        window = 4 * (os.cpu_count() or 1)
        pending: deque = deque()
        for c in classes:
            pending.append(pool.submit(load, c))
            if len(pending) >= window:
                _write(writer, bar, pending.popleft().result())
        while pending:
            _write(writer, bar, pending.popleft().result())
    return writer.manifest


def _write(writer: ShardSetWriter, bar, loaded) -> None:
    c, examples, sources = loaded
    writer.add_class(c.name, c.group, examples, sources)
    bar.update(len(sources))


BENCHMARK_SIZE = 84  # side of the stored images: the mini-ImageNet convention (Vinyals et al., Ravi & Larochelle)


def benchmark_preprocessing(size: int = BENCHMARK_SIZE, resample: str = "bilinear") -> ImagePreprocessing:
    """RGB squares of `size`; Pillow's bilinear filter widens with the scale factor, so shrinking is antialiased."""
    return ImagePreprocessing(mode="RGB", size=(size, size), resample=resample)


def write_splits(
    classes: dict[str, list[ImportClass]],
    out: str,
    *,
    dataset: dict,
    preprocessing: ImagePreprocessing,
    file_format: str = "arrow",
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> dict[str, Manifest]:
    """One shard set per split at <out>/<split>; each manifest's dataset records its split. The caller has checked
    every split's classes before this writes anything, so an input that lacks a class fails before any split is written."""
    return {
        split: write_classes(
            split_classes,
            split_uri(out, split),
            dataset={**dataset, "split": split},
            preprocessing=preprocessing,
            file_format=file_format,
            overwrite=overwrite,
            storage_options=storage_options,
            progress=progress,
            desc=f"import {dataset['name']} {split}",
        )
        for split, split_classes in classes.items()
    }
