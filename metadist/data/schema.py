"""The Arrow schema of a task shard: one row per example.

Columns (see docs/shards.md):
  label       int32   index of the example's class in the manifest's class list
  class_name  string  the class's name, unique in the shard set ("Greek/character07")
  group       string  the class's group (alphabet, domain, user ...), used for class splits
  example     either  fixed_shape_tensor<uint8>[C, H, W]: preprocessed pixels, ready to sample, or
                      binary: the encoded image file (PNG, JPEG ...), decoded and preprocessed when loaded
  source      string  where the example came from (path inside the import input), for provenance

Each class is one Arrow record batch (IPC) or one row group (Parquet), so a reader fetches exactly one class
without scanning the file; the manifest says which shard and which batch hold each class.
"""

from __future__ import annotations

import pyarrow as pa

FORMAT_NAME = "metadist.shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
FILE_FORMATS = {"arrow": ".arrow", "parquet": ".parquet"}
EXAMPLE_ENCODINGS = ("tensor", "image")
REQUIRED_COLUMNS = ("label", "class_name", "group", "example", "source")


def example_type(encoding: str, shape: tuple[int, int, int] | None) -> pa.DataType:
    if encoding == "tensor":
        if shape is None:
            raise ValueError("a tensor-encoded shard needs the example shape [C, H, W]")
        return pa.fixed_shape_tensor(pa.uint8(), list(shape))
    if encoding == "image":
        return pa.binary()
    raise ValueError(f"example encoding must be one of {EXAMPLE_ENCODINGS}, got {encoding!r}")


def shard_schema(encoding: str, shape: tuple[int, int, int] | None) -> pa.Schema:
    return pa.schema(
        [
            pa.field("label", pa.int32(), nullable=False),
            pa.field("class_name", pa.string(), nullable=False),
            pa.field("group", pa.string(), nullable=False),
            pa.field("example", example_type(encoding, shape), nullable=False),
            pa.field("source", pa.string(), nullable=False),
        ],
        metadata={b"metadist.format": FORMAT_NAME.encode(), b"metadist.format_version": str(FORMAT_VERSION).encode()},
    )
