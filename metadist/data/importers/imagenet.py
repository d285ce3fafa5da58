"""mini-ImageNet and tiered-ImageNet from the ImageNet images a user has, with the canonical class splits.

Inputs (folder or zip, any fsspec URI):
- ILSVRC2012's train images as extracted: [...]/<wnid>/<wnid>_<n>.JPEG (ILSVRC2012_img_train.tar holds one tar per
  synset; extract those too). Both benchmarks read this.
- mini-ImageNet only: Ravi & Larochelle's image files, [...]/<wnid><8-digit position>.jpg (their images/ folder, or the
  train/val/test/<wnid>/ folders of mini-imagenet-tools).
Community pickles (mini-imagenet-cache-*.pkl, tiered-imagenet's *_images_png.pkl) are refused, never unpickled.
"""

from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from typing import Literal

from metadist.data.images import ImagePreprocessing
from metadist.data.importers.common import (
    ClassFiles,
    ImportClass,
    benchmark_preprocessing,
    is_pickle_name,
    refuse_pickle,
    write_splits,
)
from metadist.data.importers.split_lists import SPLITS, mini_imagenet_images, split_classes
from metadist.data.importers.tree import TAR_SUFFIXES, InputFile, InputTree
from metadist.data.manifest import Manifest
from metadist.errors import DataImportError

IMAGENET_LICENSE = (
    "ImageNet terms of access: non-commercial research and educational use only; the images belong to their "
    "owners (https://image-net.org/download.php)"
)
IMAGENET_CITATION = (
    "Russakovsky, O., Deng, J., Su, H., et al. (2015). ImageNet Large Scale Visual Recognition Challenge. IJCV, "
    "115(3), 211-252."
)
MINI_CITATION = (
    "Vinyals, O., Blundell, C., Lillicrap, T., Kavukcuoglu, K., and Wierstra, D. (2016). Matching Networks for One Shot "
    "Learning. NeurIPS. Split: Ravi, S., and Larochelle, H. (2017). Optimization as a Model for Few-Shot Learning. ICLR."
)
MINI_SPLIT_SOURCE = (
    "Ravi & Larochelle's train/val/test.csv: github.com/yaoyao-liu/mini-imagenet-tools mini_imagenet_split/Ravi/ "
    "(= github.com/renmengye/few-shot-ssl-public fewshot/data/mini_imagenet_split/Ravi/)"
)
TIERED_CITATION = (
    "Ren, M., Triantafillou, E., Ravi, S., Snell, J., Swersky, K., Tenenbaum, J. B., Larochelle, H., and Zemel, R. S. "
    "(2018). Meta-Learning for Semi-Supervised Few-Shot Classification. ICLR."
)
TIERED_SPLIT_SOURCE = "github.com/renmengye/few-shot-ssl-public fewshot/data/tiered_imagenet_split/{train,val,test}.csv"
USE_RAW = (
    "give ILSVRC2012's train images extracted as <wnid>/<wnid>_<n>.JPEG (from ILSVRC2012_img_train.tar and the per-synset "
    "tars inside it)"
)

WNID = re.compile(r"n\d{8}")
IMAGENET_FILE = re.compile(r"(n\d{8})_(\d+)\.jpe?g", re.IGNORECASE)  # ILSVRC2012 train: n01532829_10003.JPEG
RAVI_FILE = re.compile(r"(n\d{8})(\d{8})\.jpe?g", re.IGNORECASE)  # Ravi & Larochelle: n0153282900000005.jpg

ImageSelection = Literal["ravi", "all"]


class ImageNetFiles:
    """The ImageNet images of one input, by synset, in one of the two layouts above."""

    def __init__(self, tree: InputTree, ravi_names: bool) -> None:
        self.tree = tree
        imagenet: dict[str, dict[int, InputFile]] = defaultdict(dict)
        ravi: dict[str, dict[int, InputFile]] = defaultdict(dict)
        pickles: list[str] = []
        synset_tars: list[str] = []
        for file in tree.files():
            base = posixpath.basename(file.path)
            parent = posixpath.basename(posixpath.dirname(file.path))
            if (m := IMAGENET_FILE.fullmatch(base)) and m[1] == parent:
                _add(imagenet[m[1]], int(m[2]), file)
            elif ravi_names and (m := RAVI_FILE.fullmatch(base)):
                _add(ravi[m[1]], int(m[2]), file)
            elif is_pickle_name(file.path):
                pickles.append(file.where)
            elif base.lower().endswith(TAR_SUFFIXES) and WNID.fullmatch(base.split(".")[0]):
                synset_tars.append(file.where)
        if imagenet and ravi:
            raise DataImportError(
                f"{tree.uri}: mixes ILSVRC2012 train images ({next(iter(next(iter(imagenet.values())).values())).where}) "
                f"and Ravi & Larochelle's ({next(iter(next(iter(ravi.values())).values())).where}); give one of them"
            )
        if not imagenet and not ravi:
            if pickles:
                refuse_pickle(pickles[0], USE_RAW)
            if synset_tars:
                raise DataImportError(
                    f"{synset_tars[0]}: a per-synset tar of ILSVRC2012_img_train.tar; extract each into a folder of its "
                    "name first (mkdir n01440764 && tar xf n01440764.tar -C n01440764, and so on)"
                )
            raise DataImportError(f"{tree.uri}: no ImageNet images found; {USE_RAW}")
        self.layout = "imagenet" if imagenet else "ravi"
        self.by_wnid = imagenet or ravi  # wnid → {number: file}

    def missing(self, wnids: list[str]) -> list[str]:
        return [w for w in wnids if w not in self.by_wnid]

    def sorted_files(self, wnid: str) -> list[InputFile]:
        """The synset's images by number: ILSVRC2012's order that Ravi & Larochelle's positions count in."""
        return [file for _, file in sorted(self.by_wnid[wnid].items())]


def _add(files: dict[int, InputFile], number: int, file: InputFile) -> None:
    if number in files:
        raise DataImportError(f"{file.where}: the same image as {files[number].where}; give one copy of the images")
    files[number] = file


def _open(root: str, storage_options: dict | None, instead: str) -> InputTree:
    refuse_pickle(root, instead)
    if root.rstrip("/").lower().endswith(TAR_SUFFIXES):
        raise DataImportError(f"{root}: a tar archive, read only once extracted; {instead}")
    return InputTree(root, storage_options)


def _check_complete(images: ImageNetFiles, benchmark: str, wnids_by_split: dict[str, list[str]]) -> None:
    for split, wnids in wnids_by_split.items():
        missing = images.missing(wnids)
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataImportError(
                f"{images.tree.uri}: {len(missing)} of {benchmark}'s {len(wnids)} {split} synsets have no images ({shown})"
            )


def _mini_files(images: ImageNetFiles, wnid: str, selection: ImageSelection) -> tuple[InputFile, ...]:
    positions = mini_imagenet_images()[wnid]
    if selection == "all":
        return tuple(images.sorted_files(wnid))
    if images.layout == "ravi":
        found = images.by_wnid[wnid]
        absent = [p for p in positions if p not in found]
        if absent:
            raise DataImportError(
                f"{images.tree.uri}: {len(absent)} of Ravi & Larochelle's 600 images of {wnid} are missing "
                f"(first: {wnid}{absent[0]:08d}.jpg)"
            )
        return tuple(found[p] for p in positions)
    ordered = images.sorted_files(wnid)
    if max(positions) > len(ordered):
        raise DataImportError(
            f"{images.tree.uri}: synset {wnid} has {len(ordered)} train images, but Ravi & Larochelle's list uses its "
            f"image {max(positions)}: give all of ILSVRC2012's train images of it (or images='all' to take what is there)"
        )
    return tuple(ordered[p - 1] for p in positions)


def import_mini_imagenet(
    root: str,
    out: str,
    *,
    preprocessing: ImagePreprocessing | None = None,
    images: ImageSelection = "ravi",
    file_format: str = "arrow",
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> dict[str, Manifest]:
    """mini-ImageNet's train/val/test (64/16/20 synsets) as shard sets at <out>/train, <out>/val, <out>/test.

    images="ravi" takes Ravi & Larochelle's 600 images per synset (shipped with metadist); "all" every image given.
    Class names are the wnids; each class's group is its split.
    """
    preprocessing = preprocessing or benchmark_preprocessing()
    tree = _open(root, storage_options, USE_RAW + ", or Ravi & Larochelle's images/ folder of n0153282900000005.jpg files")
    try:
        found = ImageNetFiles(tree, ravi_names=True)
        wnids = {split: [row[0] for row in rows] for split, rows in split_classes("mini-imagenet").items()}
        _check_complete(found, "mini-ImageNet", wnids)
        classes: dict[str, list[ImportClass]] = {
            split: [ClassFiles(wnid, split, tree, _mini_files(found, wnid, images)) for wnid in sorted(wnids[split])]
            for split in SPLITS
        }
        dataset = {
            "name": "mini-imagenet",
            "version": "ravi-larochelle" + ("" if images == "ravi" else "-all-images"),
            "inputs": [tree.name],
            "input_layout": "ILSVRC2012 train" if found.layout == "imagenet" else "Ravi & Larochelle images",
            "images": "Ravi & Larochelle's 600 per class" if images == "ravi" else "every image given",
            "split_source": MINI_SPLIT_SOURCE,
            "license": IMAGENET_LICENSE,
            "citation": f"{MINI_CITATION} Images: {IMAGENET_CITATION}",
            "homepage": "https://github.com/twitter/meta-learning-lstm",
        }
        return write_splits(
            classes, out, dataset=dataset, preprocessing=preprocessing, file_format=file_format,
            overwrite=overwrite, storage_options=storage_options, progress=progress,
        )
    finally:
        tree.close()


def import_tiered_imagenet(
    root: str,
    out: str,
    *,
    preprocessing: ImagePreprocessing | None = None,
    file_format: str = "arrow",
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> dict[str, Manifest]:
    """tiered-ImageNet's train/val/test (351/97/160 synsets of 20/6/8 categories) at <out>/train, val, test.

    Every ILSVRC2012 train image of each synset, as Ren et al.'s code takes them. Class names are the wnids; each
    class's group is its category's wnid (so a split can also be drawn by category).
    """
    preprocessing = preprocessing or benchmark_preprocessing()
    tree = _open(root, storage_options, USE_RAW)
    try:
        found = ImageNetFiles(tree, ravi_names=False)
        rows = split_classes("tiered-imagenet")
        _check_complete(found, "tiered-ImageNet", {split: [r[0] for r in rows[split]] for split in SPLITS})
        classes: dict[str, list[ImportClass]] = {
            split: [
                ClassFiles(wnid, category, tree, tuple(found.sorted_files(wnid)))
                for category, wnid in sorted((category, wnid) for wnid, category in rows[split])
            ]
            for split in SPLITS
        }
        dataset = {
            "name": "tiered-imagenet",
            "version": "ren-2018",
            "inputs": [tree.name],
            "input_layout": "ILSVRC2012 train",
            "split_source": TIERED_SPLIT_SOURCE,
            "license": IMAGENET_LICENSE,
            "citation": f"{TIERED_CITATION} Images: {IMAGENET_CITATION}",
            "homepage": "https://github.com/renmengye/few-shot-ssl-public",
        }
        return write_splits(
            classes, out, dataset=dataset, preprocessing=preprocessing, file_format=file_format,
            overwrite=overwrite, storage_options=storage_options, progress=progress,
        )
    finally:
        tree.close()
