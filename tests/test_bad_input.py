"""Bad input: every mistake gives an error that names the file, field or class at fault, and loses nothing saved.

Shard sets are damaged on purpose (truncated, corrupted, rewritten with the wrong schema, manifests edited or
removed), importers are fed unreadable images and wrong layouts, samplers are asked for impossible episodes, and
the CLI must print each such error as one `metadist: error: ...` line with exit code 2.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from tests.helpers import assert_one_line_error
from tests.synthetic import drawing
from metadist.cli import main
from metadist.config import EpisodeConfig, SplitConfig, TaskSourceConfig
from metadist.data import EpisodeSampler, ImagePreprocessing, ShardSet, import_image_folder, import_omniglot
from metadist.errors import DataImportError, EpisodeError, ShardError

FORMATS = ("arrow", "parquet")
ALPHABETS = {"Alpha": 3, "Beta": 3}


# -- synthetic inputs ------------------------------------------------------------------------------------------
def _omniglot_files(top: str = "images_background", alphabets=ALPHABETS, drawings: int = 20, seed: int = 0):
    """(relative path, PNG bytes) in the Omniglot layout <top>/<alphabet>/characterNN/<n>.png."""
    k = seed
    for alphabet, characters in alphabets.items():
        for c in range(1, characters + 1):
            n = drawings(alphabet, c) if callable(drawings) else drawings
            for d in range(1, n + 1):
                yield f"{top}/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png", drawing(k)
                k += 1


def _write_folder(root: Path, files) -> Path:
    for rel, data in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _write_zip(path: Path, files) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for rel, data in files:
            archive.writestr(rel, data)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def base_sets(tmp_path_factory) -> dict[str, Path]:
    """One good shard set per file format (6 classes of 20 drawings in 2 alphabets), imported once."""
    root = tmp_path_factory.mktemp("bad-input-base")
    zip_path = _write_zip(root / "images_background.zip", _omniglot_files())
    sets = {}
    for fmt in FORMATS:
        sets[fmt] = root / fmt
        import_omniglot([str(zip_path)], str(sets[fmt]), file_format=fmt, progress=False)
    return sets


@pytest.fixture
def copy_set(base_sets, tmp_path):
    """A private copy of a good shard set, to damage."""

    def copy(fmt: str = "arrow", name: str = "set") -> Path:
        return Path(shutil.copytree(base_sets[fmt], tmp_path / name))

    return copy


def _first_shard(folder: Path) -> Path:
    """The file of shard 0, as the manifest names it."""
    return folder / json.loads((folder / "manifest.json").read_text())["shards"][0]["path"]


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _rewrite_shard(folder: Path, fmt: str, transform) -> None:
    """Rewrite shard 0 class by class through `transform(table) -> table`, then fix its size and hash in the
    manifest, so only the content (not the size check) can catch what changed."""
    path = _first_shard(folder)
    if fmt == "arrow":
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        tables = [transform(pa.Table.from_batches([reader.get_batch(i)])) for i in range(reader.num_record_batches)]
    else:
        reader = pq.ParquetFile(str(path))
        tables = [transform(reader.read_row_group(i)) for i in range(reader.num_row_groups)]
    del reader
    data = io.BytesIO()
    if fmt == "arrow":
        with pa.ipc.new_file(data, tables[0].schema) as writer:
            for table in tables:
                writer.write_table(table)
    else:
        with pq.ParquetWriter(data, tables[0].schema) as writer:
            for table in tables:
                writer.write_table(table, row_group_size=table.num_rows)
    path.write_bytes(data.getvalue())

    def fix(doc):
        import hashlib

        doc["shards"][0]["num_bytes"] = len(data.getvalue())
        doc["shards"][0]["sha256"] = hashlib.sha256(data.getvalue()).hexdigest()

    _edit_manifest(folder, fix)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- shard files -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_shard_names_the_shard(fmt, copy_set):
    folder = copy_set(fmt)
    shard = _first_shard(folder)
    shard.write_bytes(shard.read_bytes()[:-100])
    shards = ShardSet(str(folder))
    with pytest.raises(ShardError, match="truncated") as err:
        shards.read_class(0)
    assert str(shard) in str(err.value)
    with pytest.raises(ShardError) as err:
        shards.verify()
    assert str(shard) in str(err.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_shard_that_matches_its_manifest_size_is_unreadable_and_named(fmt, copy_set):
    folder = copy_set(fmt)
    shard = _first_shard(folder)
    shard.write_bytes(shard.read_bytes()[:-100])
    _edit_manifest(folder, lambda doc: doc["shards"][0].update(num_bytes=shard.stat().st_size))
    with pytest.raises(ShardError, match="SHA-256") as err:
        ShardSet(str(folder)).read_class(0)  # the hash on first open catches it first
    assert str(shard) in str(err.value)
    with pytest.raises(ShardError, match=f"not a readable {fmt} shard") as err:
        ShardSet(str(folder), verify_checksums=False).read_class(0)
    assert str(shard) in str(err.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_garbage_shard_of_the_right_size_names_the_shard(fmt, copy_set):
    folder = copy_set(fmt)
    shard = _first_shard(folder)
    shard.write_bytes(bytes(shard.stat().st_size))
    with pytest.raises(ShardError, match="SHA-256") as err:
        ShardSet(str(folder)).read_class(0)  # the hash on first open catches it first
    assert str(shard) in str(err.value)
    with pytest.raises(ShardError, match=f"not a readable {fmt} shard") as err:
        ShardSet(str(folder), verify_checksums=False).read_class(0)
    assert str(shard) in str(err.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupted_bytes_in_the_middle_fail_verify_naming_the_shard(fmt, copy_set):
    folder = copy_set(fmt)
    shard = _first_shard(folder)
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    shard.write_bytes(bytes(data))
    manifest_before = (folder / "manifest.json").read_bytes()
    with pytest.raises(ShardError, match="SHA-256") as err:
        ShardSet(str(folder)).verify()
    assert str(shard) in str(err.value)
    assert (folder / "manifest.json").read_bytes() == manifest_before  # verify only reads


@pytest.mark.parametrize("fmt", FORMATS)
def test_shard_missing_a_column_names_the_column(fmt, copy_set):
    folder = copy_set(fmt)
    _rewrite_shard(folder, fmt, lambda t: t.drop_columns(["source"]))
    with pytest.raises(ShardError, match="wrong schema") as err:
        ShardSet(str(folder)).read_class(0)
    assert "'source'" in str(err.value) and str(_first_shard(folder)) in str(err.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_shard_with_an_example_column_of_another_type_names_the_column(fmt, copy_set):
    folder = copy_set(fmt)

    def as_binary(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("example")
        return t.set_column(i, "example", pa.array([b"\x00" * 784] * t.num_rows, pa.binary()))

    _rewrite_shard(folder, fmt, as_binary)
    shards = ShardSet(str(folder))
    with pytest.raises(ShardError, match="wrong schema") as err:
        shards.read_class(0)
    assert "'example'" in str(err.value) and str(_first_shard(folder)) in str(err.value)
    with pytest.raises(ShardError, match="'example'"):
        shards.verify()  # the hashes match (the manifest was fixed): the schema check still catches it


def test_class_whose_row_count_differs_from_the_manifest_is_named(copy_set):
    folder = copy_set()
    _edit_manifest(folder, lambda doc: doc["classes"][1].update(count=25))
    with pytest.raises(ShardError, match="25") as err:
        ShardSet(str(folder)).read_class(1)
    assert "'Alpha/character02'" in str(err.value)


def test_shard_listed_in_the_manifest_but_deleted_is_named(copy_set):
    folder = copy_set()
    shard = _first_shard(folder)
    shard.unlink()
    with pytest.raises(ShardError, match="missing") as err:
        ShardSet(str(folder)).read_class(0)
    assert str(shard) in str(err.value)


def test_verify_names_a_deleted_shard(copy_set, capsys):
    folder = copy_set()
    shard = _first_shard(folder)
    shard.unlink()
    with pytest.raises(ShardError) as err:
        ShardSet(str(folder)).verify()
    assert str(shard) in str(err.value)
    code, _, err_text = _cli(capsys, "data", "verify", str(folder))
    assert_one_line_error(code, err_text, str(shard))


def test_uri_that_does_not_exist_is_named(tmp_path):
    missing = tmp_path / "no" / "such" / "set"
    with pytest.raises(ShardError, match="does not exist") as err:
        ShardSet(str(missing))
    assert str(missing) in str(err.value)


# -- manifests -------------------------------------------------------------------------------------------------
def test_missing_manifest_is_named(copy_set):
    folder = copy_set()
    (folder / "manifest.json").unlink()
    with pytest.raises(ShardError, match="manifest.json") as err:
        ShardSet(str(folder))
    assert str(folder) in str(err.value)


def test_manifest_with_invalid_json_is_named(copy_set):
    folder = copy_set()
    path = folder / "manifest.json"
    path.write_text(path.read_text()[:-40])
    with pytest.raises(ShardError, match="not valid JSON") as err:
        ShardSet(str(folder))
    assert str(path) in str(err.value)


def test_manifest_that_is_not_utf8_is_named(copy_set):
    folder = copy_set()
    path = folder / "manifest.json"
    path.write_bytes(b"\xff\xfe" + path.read_bytes())
    with pytest.raises(ShardError) as err:
        ShardSet(str(folder))
    assert str(path) in str(err.value)


def _pop(*keys):
    def edit(doc):
        for key in keys[:-1]:
            doc = doc[key]
        doc.pop(keys[-1])

    return edit


def _set(value, *keys):
    def edit(doc):
        for key in keys[:-1]:
            doc = doc[key]
        doc[keys[-1]] = value

    return edit


def _duplicate_class(doc):
    doc["classes"][1]["name"] = doc["classes"][0]["name"]


MANIFEST_DAMAGE = {
    # case: (edit, text the error must contain besides the manifest's path)
    "format_version-wrong": (_set(2, "format_version"), "'format_version'"),
    "format_version-missing": (_pop("format_version"), "'format_version'"),
    "format-wrong": (_set("something.else", "format"), "'format'"),
    "file_format-missing": (_pop("file_format"), "'file_format'"),
    "file_format-unknown": (_set("csv", "file_format"), "'file_format'"),
    "example-missing": (_pop("example"), "'example'"),
    "example.shape-missing": (_pop("example", "shape"), "'example.shape'"),
    "example.shape-bad": (_set([1, 28], "example", "shape"), "'example.shape'"),
    "example.encoding-unknown": (_set("jpeg", "example", "encoding"), "'example.encoding'"),
    "dataset-missing": (_pop("dataset"), "'dataset'"),
    "preprocessing-missing": (_pop("preprocessing"), "'preprocessing'"),
    "shards-missing": (_pop("shards"), "'shards'"),
    "shards-not-a-list": (_set({"a": 1}, "shards"), "'shards'"),
    "shard.sha256-missing": (_pop("shards", 0, "sha256"), "sha256"),
    "classes-missing": (_pop("classes"), "'classes'"),
    "class.count-missing": (_pop("classes", 0, "count"), "count"),
    "class.shard-out-of-range": (_set(3, "classes", 2, "shard"), "'Alpha/character03'"),
    "class.count-zero": (_set(0, "classes", 4, "count"), "'Beta/character02'"),
    "class-duplicate": (_duplicate_class, "'Alpha/character01'"),
    # a field of the right name but the wrong type must not escape as a TypeError
    "class.count-not-an-int": (_set("many", "classes", 0, "count"), "count"),
    "class.shard-not-an-int": (_set("0", "classes", 0, "shard"), "shard"),
    # the preprocessing recorded in the manifest is part of it: a broken one names its field
    "preprocessing.mode-missing": (_pop("preprocessing", "mode"), "mode"),
    "preprocessing.mode-unknown": (_set("CMYK", "preprocessing", "mode"), "mode"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_DAMAGE))
def test_damaged_manifest_names_the_field(case, copy_set):
    folder = copy_set()
    edit, expected = MANIFEST_DAMAGE[case]
    _edit_manifest(folder, edit)
    with pytest.raises(ShardError) as err:
        ShardSet(str(folder))
    message = str(err.value)
    assert str(folder / "manifest.json") in message
    assert expected in message


# -- episodes --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_class_set(tmp_path_factory) -> Path:
    """6 classes; Alpha/character02 has only 4 drawings."""
    root = tmp_path_factory.mktemp("small-class")
    drawings = lambda alphabet, c: 4 if (alphabet, c) == ("Alpha", 2) else 20  # noqa: E731
    folder = _write_folder(root / "input", _omniglot_files(drawings=drawings))
    import_omniglot([str(folder)], str(root / "set"), progress=False)
    return root / "set"


def test_class_with_fewer_examples_than_shots_plus_queries_is_named(small_class_set):
    shards = ShardSet(str(small_class_set))
    with pytest.raises(EpisodeError, match="shots \\+ queries") as err:
        EpisodeSampler(shards, EpisodeConfig(ways=5, shots=1, queries=5), seed=0)
    assert "'Alpha/character02'" in str(err.value) and "4 examples" in str(err.value)
    # 4 are enough for 1 + 3, and a split without the class never looks at it
    EpisodeSampler(shards, EpisodeConfig(ways=5, shots=1, queries=3), seed=0).sample(0, range(2))
    EpisodeSampler(shards, EpisodeConfig(ways=3), split=SplitConfig(groups=["Beta"]), seed=0).sample(0, range(2))


def test_more_ways_than_classes_mentions_ways(base_sets):
    shards = ShardSet(str(base_sets["arrow"]))
    with pytest.raises(EpisodeError, match="ways") as err:
        EpisodeSampler(shards, EpisodeConfig(ways=7), seed=0)
    assert "6 classes" in str(err.value)
    with pytest.raises(EpisodeError, match="ways") as err:
        EpisodeSampler(shards, EpisodeConfig(ways=4), split=SplitConfig(groups=["Beta"]), seed=0)
    assert "3 classes" in str(err.value)
    with pytest.raises(EpisodeError, match="rotations"):
        EpisodeSampler(shards, EpisodeConfig(ways=25, rotations=True), seed=0)
    EpisodeSampler(shards, EpisodeConfig(ways=7, rotations=True), seed=0).sample(0, range(2))  # 24 with rotations


@pytest.mark.parametrize(
    "split,field,name",
    [
        (SplitConfig(groups=["Alpha", "Gamma"]), "split.groups", "'Gamma'"),
        (SplitConfig(exclude_groups=["alpha"]), "split.exclude_groups", "'alpha'"),
        (SplitConfig(classes=["Alpha/character01", "Alpha/character99"]), "split.classes", "'Alpha/character99'"),
    ],
)
def test_unknown_group_or_class_in_split_is_named(base_sets, split, field, name):
    shards = ShardSet(str(base_sets["arrow"]))
    with pytest.raises(EpisodeError) as err:
        EpisodeSampler(shards, EpisodeConfig(ways=2), split=split, seed=0)
    assert field in str(err.value) and name in str(err.value)


def test_split_that_selects_nothing_says_so(base_sets):
    shards = ShardSet(str(base_sets["arrow"]))
    with pytest.raises(EpisodeError, match="selects no class"):
        EpisodeSampler(shards, EpisodeConfig(ways=2), split=SplitConfig(groups=["Alpha"], exclude_groups=["Alpha"]), seed=0)


def test_rotations_on_non_square_examples(tmp_path):
    folder = _write_folder(tmp_path / "input", _omniglot_files(alphabets={"Alpha": 3}, drawings=6))
    out = tmp_path / "set"
    import_image_folder(
        str(folder / "images_background"), str(out), preprocessing=ImagePreprocessing(mode="L", size=(20, 24)), progress=False
    )
    shards = ShardSet(str(out))
    assert shards.manifest.example_shape == (1, 20, 24)
    with pytest.raises(EpisodeError, match="rotations") as err:
        EpisodeSampler(shards, EpisodeConfig(ways=2, shots=1, queries=1, rotations=True), seed=0)
    assert "20×24" in str(err.value)
    batch = EpisodeSampler(shards, EpisodeConfig(ways=2, shots=1, queries=1), seed=0).sample(0, [0])
    assert batch.support_x.shape == (1, 2, 1, 20, 24)


# -- importers -------------------------------------------------------------------------------------------------
def _with_garbage(files, bad_rel: str):
    for rel, data in files:
        yield rel, (b"this is not a PNG \x00\x01\x02" * 4 if rel == bad_rel else data)


BAD_REL = "images_background/Beta/character03/0003_07.png"  # in the last class: earlier classes are written first


@pytest.mark.parametrize(
    "kind,fmt",
    [("omniglot-folder", "arrow"), ("omniglot-zip", "parquet"), ("omniglot-zip", "arrow"), ("image-folder", "parquet")],
)
def test_unreadable_image_is_named_and_leaves_no_shard_set(kind, fmt, tmp_path):
    files = _with_garbage(_omniglot_files(), BAD_REL)
    out = tmp_path / "out"
    with pytest.raises(DataImportError) as err:
        if kind == "omniglot-folder":
            root = _write_folder(tmp_path / "input", files)
            where = str(root / BAD_REL)
            import_omniglot([str(root)], str(out), file_format=fmt, progress=False)
        elif kind == "omniglot-zip":
            archive = _write_zip(tmp_path / "images_background.zip", files)
            where = f"{archive}!{BAD_REL}"
            import_omniglot([str(archive)], str(out), file_format=fmt, progress=False)
        else:
            root = _write_folder(tmp_path / "input", files) / "images_background"
            where = str(tmp_path / "input" / BAD_REL)
            import_image_folder(str(root), str(out), preprocessing=ImagePreprocessing(), store="image", file_format=fmt, progress=False)
    assert where in str(err.value) and "not a readable image" in str(err.value)
    assert not (out / "manifest.json").exists()
    leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert leftovers == [], f"a failed import left {leftovers}"


def test_zip_that_is_not_a_zip_is_named(tmp_path, capsys):
    fake = tmp_path / "images_background.zip"
    fake.write_text("<html>not found</html>")
    with pytest.raises(DataImportError, match="zip") as err:
        import_omniglot([str(fake)], str(tmp_path / "out"), progress=False)
    assert str(fake) in str(err.value)
    assert not (tmp_path / "out").exists()
    code, _, err_text = _cli(capsys, "data", "import", "omniglot", str(fake), "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err_text, str(fake))


def test_input_that_does_not_exist_is_named(tmp_path):
    missing = tmp_path / "images_background.zip"
    with pytest.raises(DataImportError, match="does not exist") as err:
        import_omniglot([str(missing)], str(tmp_path / "out"), progress=False)
    assert str(missing) in str(err.value)
    with pytest.raises(DataImportError, match="does not exist"):
        import_image_folder(str(tmp_path / "nope"), str(tmp_path / "out"), preprocessing=ImagePreprocessing(), progress=False)


def test_input_without_drawings_is_named(tmp_path):
    empty = tmp_path / "empty"
    (empty / "Alpha").mkdir(parents=True)
    (empty / "Alpha" / "readme.txt").write_text("no images")
    with pytest.raises(DataImportError, match="no Omniglot drawings") as err:
        import_omniglot([str(empty)], str(tmp_path / "out"), progress=False)
    assert str(empty) in str(err.value)
    with pytest.raises(DataImportError, match="no images"):
        import_image_folder(str(empty), str(tmp_path / "out"), preprocessing=ImagePreprocessing(), progress=False)


def test_image_folder_mixing_two_and_three_levels_is_refused(tmp_path):
    root = tmp_path / "mixed"
    _write_folder(root, [("cat/1.png", drawing(1)), ("cat/2.png", drawing(2)), ("animals/dog/1.png", drawing(3))])
    with pytest.raises(DataImportError, match="mixes") as err:
        import_image_folder(str(root), str(tmp_path / "out"), preprocessing=ImagePreprocessing(), progress=False)
    assert str(root) in str(err.value)
    assert "cat/1.png" in str(err.value) and "animals/dog/1.png" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_same_class_in_two_inputs_is_named(tmp_path):
    a = _write_zip(tmp_path / "a.zip", _omniglot_files(alphabets={"Alpha": 2}, drawings=3))
    b = _write_zip(tmp_path / "b.zip", _omniglot_files(top="images_evaluation", alphabets={"Alpha": 1}, drawings=3))
    with pytest.raises(DataImportError, match="'Alpha/character01'") as err:
        import_omniglot([str(a), str(b)], str(tmp_path / "out"), progress=False)
    assert str(a) in str(err.value) and str(b) in str(err.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_import_onto_an_existing_shard_set_without_overwrite_keeps_it(fmt, copy_set, tmp_path, capsys):
    folder = copy_set(fmt)
    before = _snapshot(folder)
    other = _write_zip(tmp_path / "other.zip", _omniglot_files(alphabets={"Gamma": 2}, seed=500))
    with pytest.raises(ShardError, match="overwrite") as err:
        import_omniglot([str(other)], str(folder), file_format="arrow", progress=False)
    assert str(folder) in str(err.value)
    other_folder = _write_folder(tmp_path / "other", _omniglot_files(alphabets={"Gamma": 2}, seed=500))
    with pytest.raises(ShardError, match="overwrite"):
        import_image_folder(
            str(other_folder / "images_background"), str(folder), preprocessing=ImagePreprocessing(), progress=False
        )
    code, _, err_text = _cli(capsys, "data", "import", "omniglot", str(other), "--out", str(folder))
    assert_one_line_error(code, err_text, str(folder), "overwrite")
    assert _snapshot(folder) == before
    ShardSet(str(folder)).verify()


def test_failed_overwrite_keeps_the_existing_shard_set(copy_set, tmp_path):
    """An import that replaces a shard set and then fails on a bad image must not have destroyed the old one."""
    folder = copy_set("arrow")
    before = _snapshot(folder)
    bad = _write_zip(tmp_path / "bad.zip", _with_garbage(_omniglot_files(), BAD_REL))
    with pytest.raises(DataImportError, match="not a readable image"):
        import_omniglot([str(bad)], str(folder), overwrite=True, progress=False)
    assert _snapshot(folder) == before
    ShardSet(str(folder)).verify()


# -- the CLI ---------------------------------------------------------------------------------------------------
def test_cli_prints_one_line_errors_with_exit_code_2(base_sets, copy_set, tmp_path, capsys):
    missing = tmp_path / "nope"
    code, _, err = _cli(capsys, "data", "info", str(missing))
    assert_one_line_error(code, err, str(missing), "does not exist")

    damaged = copy_set("parquet", "damaged")
    shard = _first_shard(damaged)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, _, err = _cli(capsys, "data", "verify", str(damaged))
    assert_one_line_error(code, err, str(shard), "SHA-256")

    no_manifest = copy_set("arrow", "no-manifest")
    (no_manifest / "manifest.json").unlink()
    code, _, err = _cli(capsys, "data", "info", str(no_manifest))
    assert_one_line_error(code, err, "manifest.json")

    good = str(base_sets["arrow"])
    code, _, err = _cli(capsys, "data", "sample", good, "--ways", "9")
    assert_one_line_error(code, err, "ways")
    code, _, err = _cli(capsys, "data", "sample", good, "--groups", "Alpha", "Klingon")
    assert_one_line_error(code, err, "'Klingon'")
    code, _, err = _cli(capsys, "data", "import", "omniglot", str(tmp_path / "absent.zip"), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, str(tmp_path / "absent.zip"))

    code, out, err = _cli(capsys, "data", "sample", good, "--ways", "3", "--queries", "2")
    assert code == 0 and err == "" and "3-way 1-shot" in out


def test_cli_reports_an_invalid_episode_value_without_a_traceback(base_sets, capsys):
    code, _, err = _cli(capsys, "data", "sample", str(base_sets["arrow"]), "--ways", "0")
    assert code == 2, err
    assert err.startswith("metadist: error: ") and "Traceback" not in err
    assert "ways" in err


# -- configuration values --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model,kwargs,field",
    [
        (EpisodeConfig, {"ways": 0}, "ways"),
        (EpisodeConfig, {"shots": 0}, "shots"),
        (EpisodeConfig, {"queries": -1}, "queries"),
        (EpisodeConfig, {"ways": "five"}, "ways"),
        (EpisodeConfig, {"way": 5}, "way"),
        (SplitConfig, {"group": ["Alpha"]}, "group"),
        (SplitConfig, {"groups": "Alpha"}, "groups"),
        (TaskSourceConfig, {"uri": "x", "cache_mb": 0}, "cache_mb"),
        (TaskSourceConfig, {"uri": "x", "max_open_shards": 0}, "max_open_shards"),
        (TaskSourceConfig, {}, "uri"),
    ],
)
def test_invalid_config_value_names_the_field(model, kwargs, field):
    with pytest.raises(ValidationError) as err:
        model(**kwargs)
    errors = err.value.errors()
    assert len(errors) == 1
    assert errors[0]["loc"][0] == field
    assert field in str(err.value)
