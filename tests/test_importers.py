"""Importers: Omniglot zips and folders, generic image folders, encoded storage, the bundled default."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from metadist.data import (
    MAML_PREPROCESSING,
    EpisodeSampler,
    ImagePreprocessing,
    ShardSet,
    import_image_folder,
    import_omniglot,
)
from metadist.config import EpisodeConfig
from tests.synthetic import make_omniglot_zip


def test_omniglot_zip_and_extracted_folder_give_identical_shards(tmp_path, tiny_omniglot_zip):
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(tiny_omniglot_zip) as archive:
        archive.extractall(folder)
    import_omniglot([str(tiny_omniglot_zip)], str(tmp_path / "from-zip"), progress=False)
    import_omniglot([str(folder / "images_background")], str(tmp_path / "from-folder"), progress=False)
    a, b = ShardSet(str(tmp_path / "from-zip")), ShardSet(str(tmp_path / "from-folder"))
    assert [c.name for c in a.manifest.classes] == [c.name for c in b.manifest.classes]
    assert a.manifest.groups() == {"Alpha": 3, "Beta": 4}
    for i in range(len(a.manifest.classes)):
        assert np.array_equal(a.read_class(i), b.read_class(i))


def test_omniglot_preprocessing_is_the_maml_one_and_recorded(tmp_path, tiny_omniglot_zip):
    manifest = import_omniglot([str(tiny_omniglot_zip)], str(tmp_path / "set"), progress=False)
    assert manifest.preprocessing == {"mode": "L", "size": [28, 28], "resample": "lanczos", "invert": True}
    assert manifest.dataset["name"] == "omniglot" and "Lake" in manifest.dataset["citation"]
    with zipfile.ZipFile(tiny_omniglot_zip) as archive:
        member = sorted(n for n in archive.namelist() if n.startswith("images_background/Alpha/character01/"))[0]
        raw = Image.open(io.BytesIO(archive.read(member)))
    expected = 255 - np.asarray(raw.convert("L").resize((28, 28), Image.Resampling.LANCZOS))
    assert np.array_equal(ShardSet(str(tmp_path / "set")).read_class(0)[0, 0], expected)


def test_several_omniglot_inputs_merge_into_one_set(tmp_path, tiny_omniglot_zip):
    evaluation = make_omniglot_zip(tmp_path / "images_evaluation.zip", "images_evaluation", {"Gamma": 2}, seed=99)
    manifest = import_omniglot([str(tiny_omniglot_zip), str(evaluation)], str(tmp_path / "full"), progress=False)
    assert manifest.groups() == {"Alpha": 3, "Beta": 4, "Gamma": 2}
    assert manifest.dataset["version"] == "images_background+images_evaluation"


def _image_folder(root, levels: int, size=(40, 30)):
    rng = np.random.default_rng(1)
    for c in range(4):
        cls_dir = root / (f"domain{c % 2}/class{c}" if levels == 3 else f"class{c}")
        cls_dir.mkdir(parents=True)
        for i in range(7):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(cls_dir / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / "README.txt").write_text("not an image, ignored")


@pytest.mark.parametrize("levels", [2, 3])
def test_image_folder_layouts(tmp_path, levels):
    _image_folder(tmp_path / "imgs", levels)
    pre = ImagePreprocessing(mode="RGB", size=(16, 16), resample="bilinear")
    manifest = import_image_folder(str(tmp_path / "imgs"), str(tmp_path / "set"), preprocessing=pre, progress=False)
    assert manifest.example_shape == (3, 16, 16)
    assert len(manifest.classes) == 4 and all(c.count == 7 for c in manifest.classes)
    expected_groups = {"domain0": 2, "domain1": 2} if levels == 3 else {"default": 4}
    assert manifest.groups() == expected_groups
    sampler = EpisodeSampler(ShardSet(str(tmp_path / "set")), EpisodeConfig(ways=3, shots=2, queries=2), seed=0)
    assert sampler.sample(0, range(2)).support_x.shape == (2, 6, 3, 16, 16)


def test_encoded_store_decodes_to_the_same_pixels_as_tensor_store(tmp_path):
    _image_folder(tmp_path / "imgs", 2)
    pre = ImagePreprocessing(mode="L", size=(12, 12), resample="bicubic")
    import_image_folder(str(tmp_path / "imgs"), str(tmp_path / "t"), preprocessing=pre, store="tensor", progress=False)
    m = import_image_folder(str(tmp_path / "imgs"), str(tmp_path / "e"), preprocessing=pre, store="image",
                            file_format="parquet", progress=False)
    assert m.example_encoding == "image"
    t, e = ShardSet(str(tmp_path / "t")), ShardSet(str(tmp_path / "e"))
    for i in range(4):
        assert np.array_equal(t.read_class(i), e.read_class(i))


def test_bundled_default_is_imported_once_into_the_cache(small1_uri):
    from metadist.data import ensure_bundled

    assert ensure_bundled("omniglot-small1", progress=False) == small1_uri
    manifest = ShardSet(small1_uri).manifest
    assert len(manifest.classes) == 136 and manifest.num_examples == 2720
    assert manifest.preprocessing == MAML_PREPROCESSING.to_dict()


def test_zip_members_read_from_many_threads_match_a_sequential_read():
    # Python 3.12 refused interleaved reads through one shared ZipFile ("Overlapped entries ... possible zip
    # bomb") on the bundled Omniglot zip with 16 import threads; every thread now reads through its own handle.
    from concurrent.futures import ThreadPoolExecutor

    from metadist.data.bundled import BUNDLED_ZIPS, bundled_file
    from metadist.data.importers.tree import InputTree

    tree = InputTree(str(bundled_file(BUNDLED_ZIPS["omniglot-small1"])))
    files = list(tree.files())[:400]
    sequential = [tree.read(f) for f in files]
    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(tree.read, files))
    assert concurrent == sequential and all(len(b) > 0 for b in sequential)
    tree.close()
    assert not tree._handles  # every per-thread handle closed with the tree
