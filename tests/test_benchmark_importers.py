"""Benchmark importers (mini-/tiered-ImageNet, CIFAR-FS, FC100, CUB) on tiny synthetic inputs in the raw formats.

Each input holds every class of the shipped split lists with one to three tiny images, so class counts and split
membership are checked against the lists in full; images are stored small (16 px) except where the default is checked.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metadist.cli import main
from metadist.data import ShardSet, import_cifar_fs, import_cub, import_fc100, import_mini_imagenet, import_tiered_imagenet
from metadist.data.importers.common import benchmark_preprocessing
from metadist.data.importers.imagenet import ImageNetFiles, _mini_files
from metadist.data.importers.split_lists import SPLITS, mini_imagenet_images, split_classes
from metadist.data.importers.tree import InputTree
from metadist.errors import DataImportError

SMALL = benchmark_preprocessing(16)
EXPECTED_COUNTS = {
    "mini-imagenet": {"train": 64, "val": 16, "test": 20},
    "tiered-imagenet": {"train": 351, "val": 97, "test": 160},
    "cifar-fs": {"train": 64, "val": 16, "test": 20},
    "fc100": {"train": 60, "val": 20, "test": 20},
    "cub": {"train": 100, "val": 50, "test": 50},
}


def jpeg(seed: int, size: tuple[int, int] = (10, 8)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _classes_by_split(out: Path) -> dict[str, list[str]]:
    return {split: [c.name for c in ShardSet(str(out / split)).manifest.classes] for split in SPLITS}


def test_shipped_lists_have_the_canonical_sizes_and_are_disjoint():
    for benchmark, counts in EXPECTED_COUNTS.items():
        rows = split_classes(benchmark)
        if benchmark == "fc100":
            assert {s: len(rows[s]) for s in SPLITS} == {"train": 12, "val": 4, "test": 4}
        else:
            assert {s: len(rows[s]) for s in SPLITS} == counts
        names = [row[0] for s in SPLITS for row in rows[s]]
        assert len(set(names)) == len(names), benchmark
    tiered = split_classes("tiered-imagenet")
    assert [len({row[1] for row in tiered[s]}) for s in SPLITS] == [20, 6, 8]
    images = mini_imagenet_images()
    assert sorted(images) == sorted(row[0] for s in SPLITS for row in split_classes("mini-imagenet")[s])
    assert all(len(p) == 600 == len(set(p)) and min(p) >= 1 for p in images.values())


# -- ImageNet ----------------------------------------------------------------------------------------------------------


def _imagenet_folder(root: Path, wnids: list[str], per_class: int = 1) -> Path:
    for k, wnid in enumerate(wnids):
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for n in range(per_class):
            (folder / f"{wnid}_{100 + 7 * n}.JPEG").write_bytes(jpeg(k * 10 + n))
    return root


def test_mini_imagenet_from_an_imagenet_folder(tmp_path):
    wnids = [row[0] for s in SPLITS for row in split_classes("mini-imagenet")[s]]
    root = _imagenet_folder(tmp_path / "ILSVRC2012", wnids)
    (root / "train" / "README.txt").write_text("ignored")
    manifests = import_mini_imagenet(str(root), str(tmp_path / "mini"), preprocessing=SMALL, images="all", progress=False)
    assert {s: len(m.classes) for s, m in manifests.items()} == EXPECTED_COUNTS["mini-imagenet"]
    shipped = {s: sorted(row[0] for row in split_classes("mini-imagenet")[s]) for s in SPLITS}
    assert _classes_by_split(tmp_path / "mini") == shipped
    train = ShardSet(str(tmp_path / "mini" / "train"))
    assert train.manifest.example_shape == (3, 16, 16) and train.read_class(0).shape == (1, 3, 16, 16)
    assert train.manifest.groups() == {"train": 64}
    assert train.manifest.dataset["split"] == "train" and "Ravi" in train.manifest.dataset["split_source"]
    assert "ImageNet terms" in train.manifest.dataset["license"]


def test_mini_imagenet_takes_ravi_and_larochelles_images_in_either_layout(tmp_path):
    wnid = "n01532829"
    positions = mini_imagenet_images()[wnid]
    numbers = sorted(np.random.default_rng(0).choice(20_000, max(positions), replace=False) + 1)
    folder = tmp_path / "imagenet" / wnid
    folder.mkdir(parents=True)
    for n in numbers:  # listing is all this needs: the files stay empty
        (folder / f"{wnid}_{n}.JPEG").touch()
    chosen = _mini_files(ImageNetFiles(InputTree(str(tmp_path / "imagenet")), ravi_names=True), wnid, "ravi")
    assert [f.path for f in chosen] == [f"{wnid}/{wnid}_{numbers[p - 1]}.JPEG" for p in positions]

    ravi = tmp_path / "ravi" / "images"
    ravi.mkdir(parents=True)
    for p in range(1, max(positions) + 1):
        (ravi / f"{wnid}{p:08d}.jpg").touch()
    found = ImageNetFiles(InputTree(str(tmp_path / "ravi")), ravi_names=True)
    assert found.layout == "ravi"
    assert [f.path for f in _mini_files(found, wnid, "ravi")] == [f"images/{wnid}{p:08d}.jpg" for p in positions]

    (folder / f"{wnid}_{numbers[-1]}.JPEG").unlink()
    with pytest.raises(DataImportError, match=f"synset {wnid} has {max(positions) - 1} train images"):
        _mini_files(ImageNetFiles(InputTree(str(tmp_path / "imagenet")), ravi_names=True), wnid, "ravi")


def test_tiered_imagenet_groups_synsets_by_category(tmp_path):
    rows = split_classes("tiered-imagenet")
    root = _imagenet_folder(tmp_path / "ILSVRC2012", [r[0] for s in SPLITS for r in rows[s]])
    manifests = import_tiered_imagenet(str(root), str(tmp_path / "tiered"), preprocessing=benchmark_preprocessing(8), progress=False)
    assert {s: len(m.classes) for s, m in manifests.items()} == EXPECTED_COUNTS["tiered-imagenet"]
    for split in SPLITS:
        expected = {wnid: category for wnid, category in rows[split]}
        assert {c.name: c.group for c in manifests[split].classes} == expected
    assert len(manifests["train"].groups()) == 20 and manifests["test"].example_shape == (3, 8, 8)


def test_imagenet_inputs_that_cannot_be_used_are_named(tmp_path):
    wnids = [r[0] for s in SPLITS for r in split_classes("mini-imagenet")[s]]
    root = _imagenet_folder(tmp_path / "partial", wnids[:-1])
    with pytest.raises(DataImportError, match=f"1 of mini-ImageNet's 20 test synsets have no images \\({wnids[-1]}\\)"):
        import_mini_imagenet(str(root), str(tmp_path / "out"), images="all", progress=False)
    assert not (tmp_path / "out").exists()  # nothing written: every split is checked first
    cache = tmp_path / "mini-imagenet-cache-train.pkl"
    cache.write_bytes(b"\x80\x04.")
    with pytest.raises(DataImportError, match="mini-imagenet-cache-train.pkl: a pickle; metadist never unpickles"):
        import_mini_imagenet(str(cache), str(tmp_path / "out"), progress=False)
    pickles = tmp_path / "tiered"
    pickles.mkdir()
    (pickles / "train_images_png.pkl").write_bytes(b"\x80\x04.")
    with pytest.raises(DataImportError, match="train_images_png.pkl: a pickle.*ILSVRC2012's train images"):
        import_tiered_imagenet(str(pickles), str(tmp_path / "out"), progress=False)


# -- CIFAR-100: CIFAR-FS and FC100 --------------------------------------------------------------------------------------


def _cifar_names() -> tuple[list[str], list[str], dict[str, str]]:
    """CIFAR-100's label names (alphabetical in the real files too) and each class's superclass, from the shipped list."""
    coarse_of = {fine: coarse for s in SPLITS for fine, coarse in split_classes("cifar-fs")[s]}
    return sorted(coarse_of), sorted(set(coarse_of.values())), coarse_of


def make_cifar100_binary(path: Path, train_per_class: int = 2, test_per_class: int = 1) -> Path:
    """cifar-100-binary.tar.gz: records of <coarse><fine><1024 R><1024 G><1024 B>; a record's red plane is its index."""
    fine, coarse, coarse_of = _cifar_names()
    files = {"cifar-100-binary/fine_label_names.txt": "\n".join(fine).encode(),
             "cifar-100-binary/coarse_label_names.txt": "\n".join(coarse).encode()}
    k = 0
    for name, per_class in (("train.bin", train_per_class), ("test.bin", test_per_class)):
        records = []
        for _ in range(per_class):
            for f, label in enumerate(fine):
                pixels = np.zeros((3, 32, 32), np.uint8)
                pixels[0], pixels[1], pixels[2] = k % 256, f, np.arange(32, dtype=np.uint8)[None, :]
                records.append(bytes([coarse.index(coarse_of[label]), f]) + pixels.tobytes())
                k += 1
        files[f"cifar-100-binary/{name}"] = b"".join(records)
    with tarfile.open(path, "w:gz") as archive:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_cifar_fs_from_the_binary_tarball(tmp_path):
    archive = make_cifar100_binary(tmp_path / "cifar-100-binary.tar.gz")
    manifests = import_cifar_fs(str(archive), str(tmp_path / "fs"), progress=False)  # the default: 84×84 RGB
    assert {s: len(m.classes) for s, m in manifests.items()} == EXPECTED_COUNTS["cifar-fs"]
    for split in SPLITS:
        assert {(c.name, c.group) for c in manifests[split].classes} == set(split_classes("cifar-fs")[split])
        assert all(c.count == 3 for c in manifests[split].classes)
    test = ShardSet(str(tmp_path / "fs" / "test"))
    assert test.manifest.example_shape == (3, 84, 84) and test.read_class(0).shape == (3, 3, 84, 84)
    assert test.manifest.dataset["inputs"][0].endswith("cifar-100-binary.tar.gz!cifar-100-binary/train.bin")

    exact = import_cifar_fs(str(archive), str(tmp_path / "fs32"), preprocessing=benchmark_preprocessing(32), progress=False)
    apple = ShardSet(str(tmp_path / "fs32" / "train")).read_class(exact["train"].class_index["apple"])
    fine_apple = _cifar_names()[0].index("apple")
    assert (apple[:, 1] == fine_apple).all() and (apple[0, 2, 5] == np.arange(32)).all()  # planes → [C, H, W]
    assert [int(a[0, 0, 0]) for a in apple] == [fine_apple, 100 + fine_apple, 200 + fine_apple]  # train.bin, then test.bin


def test_fc100_splits_by_superclass(tmp_path):
    archive = make_cifar100_binary(tmp_path / "cifar-100-binary.tar.gz", train_per_class=1, test_per_class=1)
    manifests = import_fc100(str(archive), str(tmp_path / "fc100"), preprocessing=SMALL, progress=False)
    assert {s: len(m.classes) for s, m in manifests.items()} == EXPECTED_COUNTS["fc100"]
    _, _, coarse_of = _cifar_names()
    for split in SPLITS:
        superclasses = {row[0] for row in split_classes("fc100")[split]}
        assert set(manifests[split].groups()) == superclasses and set(manifests[split].groups().values()) == {5}
        assert all(coarse_of[c.name] == c.group for c in manifests[split].classes)


def test_cifar_python_version_and_pickles_are_refused(tmp_path, capsys):
    python_version = tmp_path / "cifar-100-python.tar.gz"
    python_version.write_bytes(b"not read")
    with pytest.raises(DataImportError, match="cifar-100-python.tar.gz: CIFAR's python version is pickled.*cifar-100-binary.tar.gz"):
        import_fc100(str(python_version), str(tmp_path / "out"), progress=False)
    extracted = tmp_path / "cifar100"
    (extracted / "cifar-100-python").mkdir(parents=True)
    for name in ("train", "test", "meta"):
        (extracted / "cifar-100-python" / name).write_bytes(b"\x80\x02.")
    assert main(["data", "import", "cifar-fs", "--inputs", str(extracted), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "python version is pickled" in err and "cifar-100-binary.tar.gz" in err
    truncated = tmp_path / "bad"
    truncated.mkdir()
    make_cifar100_binary(tmp_path / "ok.tar.gz", 1, 1)
    with tarfile.open(tmp_path / "ok.tar.gz") as archive:
        archive.extractall(truncated, filter="data")
    bin_file = truncated / "cifar-100-binary" / "test.bin"
    bin_file.write_bytes(bin_file.read_bytes()[:-5])
    with pytest.raises(DataImportError, match="test.bin: .* not a whole number of 3,074-byte CIFAR-100 records"):
        import_cifar_fs(str(truncated), str(tmp_path / "out"), progress=False)


def test_cli_imports_cifar_fs_into_one_set_per_split(tmp_path, capsys):
    archive = make_cifar100_binary(tmp_path / "cifar-100-binary.tar.gz", 1, 1)
    assert main(["data", "import", "cifar-fs", str(archive), "--out", str(tmp_path / "fs"), "--size", "12"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'fs' / 'val'}: 16 classes in" in out and "example tensor [3, 12, 12]" in out
    assert main(["data", "verify", str(tmp_path / "fs" / "test")]) == 0


# -- CUB-200-2011 -------------------------------------------------------------------------------------------------------


def make_cub_tarball(path: Path) -> Path:
    """CUB_200_2011.tgz: one 10×8 image per class, left half red, right half blue; its box covers the red half."""
    folders = sorted(row[0] for s in SPLITS for row in split_classes("cub")[s])
    pixels = np.zeros((8, 10, 3), np.uint8)
    pixels[:, :5, 0] = 255
    pixels[:, 5:, 2] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # lossless, so the crop test is exact; CUB's are JPEG
    image = buffer.getvalue()
    files: dict[str, bytes] = {}
    images, labels, boxes = [], [], []
    for i, folder in enumerate(folders, 1):
        relative = f"{folder}/{folder.split('.')[1]}_{i:04d}.jpg"
        files[f"CUB_200_2011/images/{relative}"] = image
        images.append(f"{i} {relative}")
        labels.append(f"{i} {i}")
        boxes.append(f"{i} 0.0 0.0 5.0 8.0")
    files["CUB_200_2011/images.txt"] = "\n".join(images).encode()
    files["CUB_200_2011/classes.txt"] = "\n".join(f"{i} {f}" for i, f in enumerate(folders, 1)).encode()
    files["CUB_200_2011/image_class_labels.txt"] = "\n".join(labels).encode()
    files["CUB_200_2011/bounding_boxes.txt"] = "\n".join(boxes).encode()
    with tarfile.open(path, "w:gz") as archive:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_cub_from_its_tarball(tmp_path):
    archive = make_cub_tarball(tmp_path / "CUB_200_2011.tgz")
    manifests = import_cub(str(archive), str(tmp_path / "cub"), preprocessing=SMALL, progress=False)
    assert {s: len(m.classes) for s, m in manifests.items()} == EXPECTED_COUNTS["cub"]
    shipped = {s: sorted(row[0] for row in split_classes("cub")[s]) for s in SPLITS}
    assert _classes_by_split(tmp_path / "cub") == shipped
    # Chen et al.'s rule over the 200 sorted class folders, numbered from 0
    everything = sorted(shipped["train"] + shipped["val"] + shipped["test"])
    assert shipped["test"] == [f for i, f in enumerate(everything) if i % 4 == 3]
    assert shipped["val"] == [f for i, f in enumerate(everything) if i % 4 == 1]
    test = ShardSet(str(tmp_path / "cub" / "test"))
    first = test.read_class(0)
    assert first.shape == (1, 3, 16, 16) and first[0, 2].max() > 200  # the whole image: blue on the right
    assert test.manifest.dataset["inputs"][0].endswith("CUB_200_2011.tgz!CUB_200_2011/images.txt")

    cropped = import_cub(str(archive), str(tmp_path / "cropped"), preprocessing=SMALL, bounding_boxes=True, progress=False)
    assert cropped["test"].dataset["bounding_boxes"] is True
    red = ShardSet(str(tmp_path / "cropped" / "test")).read_class(0)[0]
    assert red[0].min() == 255 and red[2].max() == 0  # only the box: the red half


def test_cub_refuses_pickles_and_names_a_missing_image(tmp_path):
    folder = tmp_path / "cub-pickled"
    folder.mkdir()
    (folder / "cub_train.pickle").write_bytes(b"\x80\x04.")
    with pytest.raises(DataImportError, match="cub_train.pickle: a pickle.*CUB_200_2011.tgz"):
        import_cub(str(folder), str(tmp_path / "out"), progress=False)
    archive = make_cub_tarball(tmp_path / "CUB_200_2011.tgz")
    extracted = tmp_path / "extracted"
    with tarfile.open(archive) as tar:
        tar.extractall(extracted, filter="data")
    victim = next((extracted / "CUB_200_2011" / "images").glob("100.*/*.jpg"))
    victim.unlink()
    with pytest.raises(DataImportError, match=f"1 of the images in images.txt are not in it \\(first: images/{victim.parent.name}/"):
        import_cub(str(extracted / "CUB_200_2011"), str(tmp_path / "out"), preprocessing=SMALL, progress=False)
