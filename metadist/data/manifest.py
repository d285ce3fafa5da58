"""The shard set's manifest: written last, read first.

It lists shards, classes, groups and per-class counts, the data set's name and version, and its
preprocessing, so a sampler plans episodes without scanning any shard. Its presence marks a complete shard
set: importers write it only after every shard is in place.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from dataclasses import dataclass, field

from metadist.data import schema
from metadist.errors import ShardError


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the shard set's root, and inside it (checked when the manifest is read)
    num_rows: int
    num_bytes: int
    sha256: str


@dataclass(frozen=True)
class ClassInfo:
    name: str  # unique within the shard set
    group: str
    shard: int  # index into Manifest.shards
    batch: int  # record batch (IPC) or row group (Parquet) holding exactly this class
    count: int  # examples of this class


@dataclass(frozen=True)
class Manifest:
    dataset: dict  # name, version, source, license, citation: free-form, recorded as given
    file_format: str  # "arrow" (IPC / Feather v2) or "parquet"
    example_encoding: str  # "tensor" (preprocessed pixels) or "image" (encoded file bytes)
    example_shape: tuple[int, int, int]  # [C, H, W] of a sampled example, after preprocessing
    preprocessing: dict  # metadist.data.images.ImagePreprocessing as a dict
    shards: tuple[ShardInfo, ...]
    classes: tuple[ClassInfo, ...]
    format_version: int = schema.FORMAT_VERSION
    class_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_index", {c.name: i for i, c in enumerate(self.classes)})

    @property
    def num_examples(self) -> int:
        return sum(c.count for c in self.classes)

    def groups(self) -> dict[str, int]:
        """Group name → number of classes, in first-seen order."""
        return dict(Counter(c.group for c in self.classes))

    def to_json(self) -> str:
        doc = {
            "format": schema.FORMAT_NAME,
            "format_version": self.format_version,
            "dataset": self.dataset,
            "file_format": self.file_format,
            "example": {"encoding": self.example_encoding, "shape": list(self.example_shape), "dtype": "uint8"},
            "preprocessing": self.preprocessing,
            "num_classes": len(self.classes),
            "num_examples": self.num_examples,
            "groups": self.groups(),
            "shards": [vars(s) for s in self.shards],
            "classes": [vars(c) for c in self.classes],
        }
        # sort_keys + fixed separators: the same import gives byte-identical manifests.
        return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> "Manifest":
        """Parse and validate; `where` (the manifest's URI) is named in every error."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ShardError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("format") != schema.FORMAT_NAME:
            raise ShardError(f"{where}: field 'format' must be {schema.FORMAT_NAME!r}; is this a metadist manifest?")
        if doc.get("format_version") != schema.FORMAT_VERSION:
            raise ShardError(
                f"{where}: field 'format_version' is {doc.get('format_version')!r}; "
                f"this metadist reads version {schema.FORMAT_VERSION}"
            )

        def need(d: dict, key: str, typ: type | tuple, path: str):
            if key not in d:
                raise ShardError(f"{where}: missing field '{path}{key}'")
            if not isinstance(d[key], typ):
                raise ShardError(f"{where}: field '{path}{key}' must be {typ}, got {type(d[key]).__name__}")
            return d[key]

        example = need(doc, "example", dict, "")
        encoding = need(example, "encoding", str, "example.")
        if encoding not in schema.EXAMPLE_ENCODINGS:
            raise ShardError(f"{where}: field 'example.encoding' must be one of {schema.EXAMPLE_ENCODINGS}")
        shape = need(example, "shape", list, "example.")
        if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
            raise ShardError(f"{where}: field 'example.shape' must be [C, H, W] positive ints, got {shape}")
        file_format = need(doc, "file_format", str, "")
        if file_format not in schema.FILE_FORMATS:
            raise ShardError(f"{where}: field 'file_format' must be one of {sorted(schema.FILE_FORMATS)}")
        try:
            shards = tuple(ShardInfo(**s) for s in need(doc, "shards", list, ""))
            classes = tuple(ClassInfo(**c) for c in need(doc, "classes", list, ""))
        except TypeError as exc:
            raise ShardError(f"{where}: malformed entry in 'shards' or 'classes' ({exc})") from exc
        for kind, entries, types in (
            ("shards", shards, {"path": str, "num_rows": int, "num_bytes": int, "sha256": str}),
            ("classes", classes, {"name": str, "group": str, "shard": int, "batch": int, "count": int}),
        ):
            for i, entry in enumerate(entries):
                for key, typ in types.items():
                    value = getattr(entry, key)
                    if not isinstance(value, typ) or isinstance(value, bool):
                        raise ShardError(f"{where}: field '{kind}[{i}].{key}' must be {typ.__name__}, got {type(value).__name__}")
        for i, shard in enumerate(shards):
            if not stays_inside(shard.path):
                raise ShardError(
                    f"{where}: field 'shards[{i}].path' is {shard.path!r}; a shard's path must be relative and stay "
                    "inside the shard set"
                )
        preprocessing = need(doc, "preprocessing", dict, "")
        for key, typ in (("mode", str), ("size", list), ("resample", str), ("invert", bool)):
            need(preprocessing, key, typ, "preprocessing.")
        from metadist.data.images import ImagePreprocessing

        try:
            ImagePreprocessing.from_dict(preprocessing)
        except (TypeError, ValueError) as exc:
            raise ShardError(f"{where}: field 'preprocessing' is invalid ({exc})") from exc
        for i, c in enumerate(classes):
            if not 0 <= c.shard < len(shards):
                raise ShardError(f"{where}: classes[{i}] ({c.name!r}) names shard {c.shard}, but there are {len(shards)}")
            if c.count < 1:
                raise ShardError(f"{where}: classes[{i}] ({c.name!r}) has count {c.count}")
        names = [c.name for c in classes]
        if len(set(names)) != len(names):
            dup = next(n for n, k in Counter(names).items() if k > 1)
            raise ShardError(f"{where}: class name {dup!r} appears twice in 'classes'")
        return cls(
            dataset=need(doc, "dataset", dict, ""),
            file_format=file_format,
            example_encoding=encoding,
            example_shape=tuple(shape),
            preprocessing=need(doc, "preprocessing", dict, ""),
            shards=shards,
            classes=classes,
        )


def stays_inside(path: str) -> bool:
    """A relative path that names a file inside its base: not absolute, no drive or URI (C:, s3://, a::b: no colon at
    all), no backslash, and no '..' that climbs out."""
    if not path or path.startswith("/") or "\\" in path or ":" in path:
        return False
    normal = posixpath.normpath(path)
    return normal not in (".", "..") and not normal.startswith("../")
