"""What every image importer shares: decode classes in parallel and write them in a stable order."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tqdm.auto import tqdm

from metadist.data.images import ImagePreprocessing
from metadist.data.importers.tree import InputFile, InputTree
from metadist.data.manifest import Manifest
from metadist.data.writer import DEFAULT_SHARD_MB, ShardSetWriter
from metadist.errors import DataImportError


@dataclass(frozen=True)
class ClassFiles:
    name: str
    group: str
    tree: InputTree
    files: tuple[InputFile, ...]


def write_classes(
    classes: list[ClassFiles],
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
            raise DataImportError(f"class {c.name!r} occurs in both {seen[c.name]} and {c.tree.uri}")
        seen[c.name] = c.tree.uri

    def load(c: ClassFiles):
        raw = [c.tree.read(f) for f in c.files]
        decoded = [preprocessing.decode(data, source=f.where) for data, f in zip(raw, c.files)]
        return c, (decoded if store == "tensor" else raw)

    total = sum(len(c.files) for c in classes)
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
        tqdm(total=total, desc=f"import {dataset.get('name', '')}", unit="img", disable=not progress) as bar,
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
    c, examples = loaded
    writer.add_class(c.name, c.group, examples, [f.path for f in c.files])
    bar.update(len(c.files))
