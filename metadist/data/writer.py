"""Write a shard set: class-ordered shards first, the manifest last (its presence marks completion)."""

from __future__ import annotations

import hashlib
import logging
import posixpath
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from metadist.data import schema
from metadist.data.manifest import ClassInfo, Manifest, ShardInfo
from metadist.data.uri import filesystem, join
from metadist.errors import ShardError

log = logging.getLogger(__name__)

DEFAULT_SHARD_MB = 64  # big enough that a remote read is dominated by bandwidth, small enough to spread over workers


class _HashingSink:
    """A write-only file wrapper that counts bytes and hashes them as they pass (no second read)."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.num_bytes = 0
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.num_bytes += view.nbytes
        self.raw.write(view)
        return view.nbytes

    def tell(self) -> int:
        return self.num_bytes

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
            self.closed = True


class ShardSetWriter:
    """Context manager that writes one class at a time.

    >>> with ShardSetWriter("memory://demo", dataset={"name": "demo"}, preprocessing=p.to_dict(),
    ...                     example_shape=(1, 28, 28)) as writer:
    ...     writer.add_class("a/char1", group="a", examples=[array, ...], sources=["a/char1/1.png", ...])

    On an exception inside the block the shards written so far are removed and no manifest is written.
    """

    def __init__(
        self,
        uri: str,
        *,
        dataset: dict,
        preprocessing: dict,
        example_shape: tuple[int, int, int],
        example_encoding: str = "tensor",
        file_format: str = "arrow",
        shard_mb: float = DEFAULT_SHARD_MB,
        overwrite: bool = False,
        storage_options: dict | None = None,
    ) -> None:
        if file_format not in schema.FILE_FORMATS:
            raise ValueError(f"file_format must be one of {sorted(schema.FILE_FORMATS)}, got {file_format!r}")
        self.uri = uri.rstrip("/")
        self.fs, self.root = filesystem(self.uri, storage_options)
        self.dataset = dataset
        self.preprocessing = preprocessing
        self.example_shape: tuple[int, int, int] = (int(example_shape[0]), int(example_shape[1]), int(example_shape[2]))
        self.example_encoding = example_encoding
        self.file_format = file_format
        self.shard_bytes = int(shard_mb * 2**20)
        self.overwrite = overwrite
        self.schema = schema.shard_schema(example_encoding, self.example_shape)
        self._shards: list[ShardInfo] = []
        self._classes: list[ClassInfo] = []
        self._names: set[str] = set()
        self._sink: Any = None  # the open shard file (_HashingSink) while a shard is being written
        self._writer: Any = None  # an Arrow IPC file writer or a ParquetWriter, while a shard is open
        self._rows = 0
        self._batches = 0
        self._written_paths: list[str] = []
        self._staging: str | None = None
        self._created: list[str] = []

    # -- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> "ShardSetWriter":
        manifest_path = join(self.root, schema.MANIFEST_NAME)
        if self.fs.exists(manifest_path):
            if not self.overwrite:
                raise ShardError(
                    f"{self.uri}: already holds a shard set ({schema.MANIFEST_NAME} exists); "
                    "choose another destination or pass overwrite (--overwrite) to replace it"
                )
            # Nothing is removed yet: the new shards go to a staging folder and replace the old set only
            # once every one of them is written (see _commit), so a failed import loses nothing.
            self._staging = join(self.root, f".staging-{uuid.uuid4().hex}")
        # The folders this import creates (the destination and any missing parents): a failed import removes them.
        self._created.clear()
        folder = self.root
        while folder and folder != posixpath.dirname(folder) and not self.fs.exists(folder):
            self._created.append(folder)
            folder = posixpath.dirname(folder)
        self.fs.makedirs(self._staging or self.root, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._close_shard()
            self._commit()
            self._write_manifest()
            return
        self._abort()

    def _commit(self) -> None:
        if self._staging is None:
            return
        if not self._classes:
            raise ShardError(f"{self.uri}: no classes were written; refusing to write an empty shard set")
        # The old manifest goes first, so a failure during the swap leaves no shard set that looks valid.
        self.fs.rm(join(self.root, schema.MANIFEST_NAME))
        for old in self.fs.glob(join(self.root, "shard-*")):
            self.fs.rm(old)
        for staged in self._written_paths:
            self.fs.mv(staged, join(self.root, staged.rsplit("/", 1)[-1]))
        if self.fs.exists(self._staging):  # an object store has no empty folders to remove
            self.fs.rm(self._staging, recursive=True)

    def _abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._sink.close()
        for path in self._written_paths:
            if self.fs.exists(path):
                self.fs.rm(path)
        if self._staging is not None and self.fs.exists(self._staging):
            self.fs.rm(self._staging, recursive=True)
        for folder in self._created:  # innermost first; only if empty (an object store has no empty folders)
            if self.fs.isdir(folder) and not self.fs.ls(folder, detail=False):
                self.fs.rmdir(folder)
        log.info("import into %s failed; removed %d partial shard(s)", self.uri, len(self._written_paths))

    # -- writing ---------------------------------------------------------------------------------------------
    def add_class(
        self, name: str, group: str, examples: Sequence[np.ndarray] | Sequence[bytes], sources: Sequence[str]
    ) -> None:
        if name in self._names:
            raise ShardError(f"{self.uri}: class {name!r} added twice (from {sources[0] if sources else '?'})")
        if len(examples) == 0:
            raise ShardError(f"{self.uri}: class {name!r} has no examples")
        if len(examples) != len(sources):
            raise ValueError("examples and sources must have the same length")
        if self._writer is None or self._sink.num_bytes >= self.shard_bytes:
            self._close_shard()
            self._open_shard()
        label = len(self._classes)
        n = len(examples)
        if self.example_encoding == "tensor":
            stacked = np.stack(examples).astype(np.uint8, copy=False)
            if stacked.shape[1:] != self.example_shape:
                raise ShardError(f"{sources[0]}: example shape {stacked.shape[1:]} != {self.example_shape}")
            storage = pa.FixedSizeListArray.from_arrays(pa.array(stacked.reshape(-1), pa.uint8()), int(np.prod(self.example_shape)))
            example_col = pa.ExtensionArray.from_storage(self.schema.field("example").type, storage)
        else:
            example_col = pa.array(list(examples), pa.binary())
        batch = pa.record_batch(
            [
                pa.array(np.full(n, label, np.int32)),
                pa.array([name] * n, pa.string()),
                pa.array([group] * n, pa.string()),
                example_col,
                pa.array(list(sources), pa.string()),
            ],
            schema=self.schema,
        )
        if self.file_format == "arrow":
            self._writer.write_batch(batch)
        else:
            self._writer.write_table(pa.Table.from_batches([batch]), row_group_size=n)
        self._names.add(name)
        self._classes.append(ClassInfo(name=name, group=group, shard=len(self._shards), batch=self._batches, count=n))
        self._batches += 1
        self._rows += n

    def _open_shard(self) -> None:
        path = join(self._staging or self.root, f"shard-{len(self._shards):05d}{schema.FILE_FORMATS[self.file_format]}")
        self._written_paths.append(path)
        self._sink = _HashingSink(self.fs.open(path, "wb"))
        if self.file_format == "arrow":
            # Uncompressed IPC: local shards are memory-mapped and read without a copy.
            self._writer = pa.ipc.new_file(self._sink, self.schema)
        else:
            self._writer = pq.ParquetWriter(self._sink, self.schema, compression="zstd")
        self._rows = 0
        self._batches = 0

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._sink.close()
        name = self._written_paths[-1].rsplit("/", 1)[-1]
        self._shards.append(ShardInfo(path=name, num_rows=self._rows, num_bytes=self._sink.num_bytes, sha256=self._sink.sha256.hexdigest()))
        self._writer = None

    def _write_manifest(self) -> None:
        if not self._classes:
            raise ShardError(f"{self.uri}: no classes were written; refusing to write an empty shard set")
        manifest = Manifest(
            dataset=self.dataset,
            file_format=self.file_format,
            example_encoding=self.example_encoding,
            example_shape=self.example_shape,
            preprocessing=self.preprocessing,
            shards=tuple(self._shards),
            classes=tuple(self._classes),
        )
        with self.fs.open(join(self.root, schema.MANIFEST_NAME), "w", encoding="utf-8") as f:
            f.write(manifest.to_json())
        self.manifest = manifest
