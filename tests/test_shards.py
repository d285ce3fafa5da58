"""Shard sets: the writer/reader round trip on several filesystems and formats, determinism, streaming bounds."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pyarrow as pa
import pytest

from metadist.data import ShardSet, ShardSetWriter, import_omniglot
from metadist.data.manifest import Manifest
from metadist.errors import ShardError

SHAPE = (1, 4, 4)


def write_set(uri: str, classes: int, per_class: int = 6, shard_mb: float = 64, file_format: str = "arrow", **kw):
    rng = np.random.default_rng(0)
    with ShardSetWriter(
        uri, dataset={"name": "toy"}, preprocessing={"mode": "L", "size": [4, 4], "resample": "box", "invert": False},
        example_shape=SHAPE, file_format=file_format, shard_mb=shard_mb, **kw,
    ) as writer:
        data = {}
        for c in range(classes):
            examples = [rng.integers(0, 256, SHAPE, dtype=np.uint8) for _ in range(per_class)]
            writer.add_class(f"g{c % 3}/c{c}", f"g{c % 3}", examples, [f"c{c}/{i}.png" for i in range(per_class)])
            data[c] = np.stack(examples)
    return data


@pytest.mark.parametrize("file_format", ["arrow", "parquet"])
@pytest.mark.parametrize("scheme", ["local", "file", "memory"])
def test_round_trip(tmp_path, file_format, scheme):
    uri = {"local": str(tmp_path / "set"), "file": f"file://{tmp_path}/set", "memory": f"memory://rt-{file_format}/set"}[scheme]
    data = write_set(uri, classes=7, file_format=file_format)
    shards = ShardSet(uri)
    assert shards.manifest.groups() == {"g0": 3, "g1": 2, "g2": 2}
    assert shards.manifest.num_examples == 42
    for c, expected in data.items():
        assert np.array_equal(shards.read_class(c), expected)
    shards.verify()
    if scheme == "memory":
        fsspec.filesystem("memory").rm(f"/rt-{file_format}", recursive=True)


def test_classes_are_never_split_across_shards_and_readers_are_bounded(tmp_path):
    # ~100 bytes per class and a 150-byte shard budget: roughly one class per shard file.
    data = write_set(str(tmp_path / "many"), classes=40, shard_mb=150 / 2**20)
    shards = ShardSet(str(tmp_path / "many"), max_open_shards=3)
    assert len(shards.manifest.shards) >= 20
    assert sum(s.num_rows for s in shards.manifest.shards) == 240
    for c in reversed(range(40)):
        assert np.array_equal(shards.read_class(c), data[c])
        assert len(shards._open) <= 3


def test_manifest_is_written_last_and_round_trips(tmp_path):
    uri = str(tmp_path / "set")
    with pytest.raises(RuntimeError):
        with ShardSetWriter(uri, dataset={}, preprocessing={}, example_shape=SHAPE) as writer:
            writer.add_class("a", "g", [np.zeros(SHAPE, np.uint8)] * 3, ["x"] * 3)
            assert not (tmp_path / "set" / "manifest.json").exists()
            raise RuntimeError("import interrupted")
    assert not (tmp_path / "set" / "manifest.json").exists()
    assert list((tmp_path / "set").glob("shard-*")) == []  # partial shards are removed too
    write_set(uri, classes=2)
    text = (tmp_path / "set" / "manifest.json").read_text()
    manifest = Manifest.from_json(text, where=uri)
    assert manifest.to_json() == text
    doc = json.loads(text)
    assert doc["classes"][1] == {"name": "g1/c1", "group": "g1", "shard": 0, "batch": 1, "count": 6}


def test_existing_shard_set_is_kept_unless_overwrite(tmp_path):
    uri = str(tmp_path / "set")
    first = write_set(uri, classes=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "set").iterdir()}
    with pytest.raises(ShardError, match="already holds a shard set"):
        write_set(uri, classes=3)
    assert {p.name: p.read_bytes() for p in (tmp_path / "set").iterdir()} == before
    assert np.array_equal(ShardSet(uri).read_class(1), first[1])
    write_set(uri, classes=3, overwrite=True)
    assert len(ShardSet(uri).manifest.classes) == 3


def test_shard_schema_is_documented_arrow(small1_uri):
    shards = ShardSet(small1_uri)
    with pa.memory_map(f"{small1_uri}/{shards.manifest.shards[0].path}") as source:
        reader = pa.ipc.open_file(source)
        schema = reader.schema
        assert schema.names == ["label", "class_name", "group", "example", "source"]
        assert schema.field("example").type == pa.fixed_shape_tensor(pa.uint8(), [1, 28, 28])
        assert reader.num_record_batches == len(shards.manifest.classes)  # one record batch per class
        batch = reader.get_batch(5)
        assert set(batch.column("label").to_pylist()) == {5}


def test_import_is_deterministic(tmp_path, tiny_omniglot_zip):
    for fmt in ("arrow", "parquet"):
        a, b = tmp_path / f"a-{fmt}", tmp_path / f"b-{fmt}"
        import_omniglot([str(tiny_omniglot_zip)], str(a), file_format=fmt, progress=False)
        import_omniglot([str(tiny_omniglot_zip)], str(b), file_format=fmt, progress=False)
        files = sorted(p.name for p in a.iterdir())
        assert files == sorted(p.name for p in b.iterdir())
        for name in files:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
