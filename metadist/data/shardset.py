"""Read a shard set lazily: the manifest first, then exactly the record batches (classes) that are asked for.

A process opens only the shards its episodes touch, keeps at most `max_open_shards` open (least recently used
are closed), and memory-maps local files, so what it holds does not grow with the number of shards. The first
time a ShardSet opens a shard it checks the file's SHA-256 against the manifest (`verify_checksums`, on by
default): one streaming read per shard per ShardSet (a process opens each shard set it samples from once), never
repeated when the shard is reopened, and nothing on the sampler's path to a shard already open.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from metadist.config import DEFAULT_MAX_OPEN_SHARDS, DEFAULT_VERIFY_CHECKSUMS
from metadist.data import schema
from metadist.data.images import ImagePreprocessing
from metadist.data.manifest import ClassInfo, Manifest
from metadist.data.uri import file_info, filesystem, is_local, join
from metadist.errors import DataImportError, ShardError

log = logging.getLogger(__name__)

HASH_BLOCK_BYTES = 1 << 22  # 4 MiB reads while hashing: one shard never sits in memory whole


class ShardSet:
    """A read-only view of a shard set at `uri`.

    >>> shards = ShardSet("s3://bucket/omniglot")
    >>> shards.manifest.groups()
    >>> pixels = shards.read_class(shards.manifest.class_index["Greek/character01"])  # uint8 [20, 1, 28, 28]
    """

    def __init__(self, uri: str, *, storage_options: dict | None = None, max_open_shards: int = DEFAULT_MAX_OPEN_SHARDS,
                 verify_checksums: bool = DEFAULT_VERIFY_CHECKSUMS) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = filesystem(self.uri, storage_options)
        self.max_open_shards = max_open_shards
        self.verify_checksums = verify_checksums
        self._hashed: set[int] = set()  # shards whose SHA-256 matched (never hashed twice)
        self.manifest = self._read_manifest()
        self.preprocessing = ImagePreprocessing.from_dict(self.manifest.preprocessing)
        self._expected_example_type = schema.example_type(self.manifest.example_encoding, self.manifest.example_shape)
        self._open: OrderedDict[int, object] = OrderedDict()  # shard index → IPC reader or ParquetFile
        self._batches_needed = [0] * len(self.manifest.shards)  # per shard: 1 + its highest class batch
        for c in self.manifest.classes:
            self._batches_needed[c.shard] = max(self._batches_needed[c.shard], c.batch + 1)

    def __repr__(self) -> str:
        m = self.manifest
        return f"ShardSet({self.uri!r}: {len(m.classes)} classes in {len(m.groups())} groups, {len(m.shards)} shards)"

    # -- manifest --------------------------------------------------------------------------------------------
    def _read_manifest(self) -> Manifest:
        path = join(self.root, schema.MANIFEST_NAME)
        if file_info(self.fs, path, self.uri) is None:
            if file_info(self.fs, self.root, self.uri) is None:
                raise ShardError(f"{self.uri}: does not exist")
            raise ShardError(
                f"{self.uri}: no {schema.MANIFEST_NAME}; not a shard set, or its import did not finish "
                "(the manifest is written last)"
            )
        where = join(self.uri, schema.MANIFEST_NAME)
        with self.fs.open(path, "rb") as f:
            data = f.read()
        self.manifest_sha256 = hashlib.sha256(data).hexdigest()  # names this exact version of the set (MLflow datasets)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ShardError(f"{where}: not UTF-8 text ({exc})") from None
        return Manifest.from_json(text, where=where)

    @property
    def manifest_uri(self) -> str:
        return join(self.uri, schema.MANIFEST_NAME)

    def shard_uri(self, shard: int) -> str:
        return join(self.uri, self.manifest.shards[shard].path)

    # -- shard files -----------------------------------------------------------------------------------------
    def _reader(self, shard: int):
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        info = self.manifest.shards[shard]
        path = join(self.root, info.path)
        where = self.shard_uri(shard)
        stat = file_info(self.fs, path, where)
        if stat is None:
            raise ShardError(f"{where}: listed in the manifest but missing")
        if stat.get("size") != info.num_bytes:
            raise ShardError(f"{where}: {stat.get('size')} bytes, the manifest says {info.num_bytes}; truncated or replaced?")
        if self.verify_checksums and shard not in self._hashed:
            self._check_sha256(shard)
        source = pa.memory_map(self.fs._strip_protocol(path)) if is_local(self.fs) else self.fs.open(path, "rb")
        try:
            if self.manifest.file_format == "arrow":
                reader = pa.ipc.open_file(source)
                file_schema = reader.schema
                batches = reader.num_record_batches
            else:
                reader = pq.ParquetFile(source)
                file_schema = reader.schema_arrow
                batches = reader.num_row_groups
        except (pa.ArrowInvalid, ValueError, OSError) as exc:  # ValueError: fsspec, e.g. an HTTP server without ranges
            raise ShardError(f"{where}: not a readable {self.manifest.file_format} shard ({exc})") from exc
        self._check_schema(file_schema, where)
        if batches < self._batches_needed[shard]:
            raise ShardError(f"{where}: has {batches} batches, the manifest needs {self._batches_needed[shard]}")
        self._open[shard] = reader
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)  # dropping the reader unmaps / closes the file
        return reader

    def _check_schema(self, file_schema: pa.Schema, where: str) -> None:
        for column in schema.REQUIRED_COLUMNS:
            if column not in file_schema.names:
                raise ShardError(f"{where}: wrong schema, column {column!r} is missing (has {file_schema.names})")
        got = file_schema.field("example").type
        if got != self._expected_example_type:
            raise ShardError(f"{where}: wrong schema, column 'example' is {got}, the manifest says {self._expected_example_type}")

    # -- classes ---------------------------------------------------------------------------------------------
    def read_class(self, class_index: int) -> np.ndarray:
        """All examples of one class as uint8 [count, C, H, W] (decoded and preprocessed if stored encoded)."""
        info: ClassInfo = self.manifest.classes[class_index]
        where = self.shard_uri(info.shard)
        reader = self._reader(info.shard)
        try:
            if self.manifest.file_format == "arrow":
                table = reader.get_batch(info.batch)
            else:
                table = reader.read_row_group(info.batch)
        except (pa.ArrowInvalid, ValueError, OSError) as exc:  # ValueError: fsspec, e.g. an HTTP server without ranges
            raise ShardError(f"{where}: class {info.name!r} (batch {info.batch}) cannot be read ({exc})") from exc
        if table.num_rows != info.count:
            raise ShardError(f"{where}: class {info.name!r} has {table.num_rows} rows, the manifest says {info.count}")
        labels = table.column("label")
        if labels[0].as_py() != class_index:
            raise ShardError(f"{where}: batch {info.batch} holds label {labels[0].as_py()}, expected class {info.name!r}")
        column = table.column("example")
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if self.manifest.example_encoding == "tensor":
            flat = column.storage.flatten()
            # Straight from the Arrow buffer (zero-copy on a memory map); to_numpy() would import pandas.
            pixels = np.frombuffer(flat.buffers()[1], dtype=np.uint8, count=len(flat), offset=flat.offset)
            return pixels.reshape((info.count, *self.manifest.example_shape))
        sources = table.column("source").to_pylist()
        out = np.empty((info.count, *self.manifest.example_shape), np.uint8)
        for i, data in enumerate(column.to_pylist()):
            try:
                out[i] = self.preprocessing.decode(data, source=f"{where} ({sources[i]})")
            except DataImportError as exc:
                raise ShardError(f"class {info.name!r}: {exc}") from exc
        return out

    # -- integrity -------------------------------------------------------------------------------------------
    def _check_sha256(self, shard: int) -> None:
        """Stream shard `shard` through SHA-256 and compare with the manifest; remember a match."""
        info = self.manifest.shards[shard]
        path = join(self.root, info.path)
        digest = hashlib.sha256()
        try:
            with self.fs.open(path, "rb") as f:
                for block in iter(lambda: f.read(HASH_BLOCK_BYTES), b""):
                    digest.update(block)
        except FileNotFoundError:
            file_info(self.fs, path, self.shard_uri(shard))  # a store that cannot be reached says so
            raise ShardError(f"{self.shard_uri(shard)}: listed in the manifest but missing") from None
        if digest.hexdigest() != info.sha256:
            raise ShardError(
                f"{self.shard_uri(shard)}: SHA-256 differs from the manifest; the shard is corrupted or was changed "
                "after its import"
            )
        self._hashed.add(shard)

    def verify(self, progress: bool = False) -> None:
        """Check every shard's size and SHA-256 against the manifest, and every class's rows."""
        from tqdm.auto import tqdm

        for i in tqdm(range(len(self.manifest.shards)), desc="verify shards", unit="shard", disable=not progress):
            self._check_sha256(i)
        for index in range(len(self.manifest.classes)):
            self.read_class(index)

    def close(self) -> None:
        self._open.clear()
