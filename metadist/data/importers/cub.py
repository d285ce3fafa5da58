"""CUB-200-2011 from its tarball (or the extracted folder), with the 100/50/50 class split of Chen et al. (2019).

Input: CUB_200_2011.tgz as downloaded, or its contents (folder or zip): images/<class folder>/<file>.jpg, images.txt
(image id, path under images/), classes.txt (class id, class folder), image_class_labels.txt (image id, class id) and,
for `bounding_boxes`, bounding_boxes.txt (image id, x, y, width, height in pixels). The 11,788 images listed in
images.txt are imported in its order; with `bounding_boxes`, each is cropped to its bird's box before resizing.

A compressed tarball cannot be read out of order cheaply, so it is read twice, start to end: the lists, then the
images, which are decoded as they stream past and held (preprocessed) until written: about 250 MB at 84×84.
"""

from __future__ import annotations

import os
import posixpath
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from metadist.data.images import ImagePreprocessing, open_image
from metadist.data.importers.common import (
    ArrayClass,
    ImportClass,
    benchmark_preprocessing,
    is_pickle_name,
    refuse_pickle,
    write_splits,
)
from metadist.data.importers.split_lists import SPLITS, split_classes
from metadist.data.importers.tree import InputTree, TarTree, open_tree
from metadist.data.manifest import Manifest
from metadist.errors import DataImportError

LIST_FILES = ("images.txt", "classes.txt", "image_class_labels.txt", "bounding_boxes.txt")
USE_RAW = (
    "give CUB_200_2011.tgz as downloaded (or its extracted CUB_200_2011/ folder: images/, images.txt, classes.txt, "
    "image_class_labels.txt) from https://www.vision.caltech.edu/datasets/cub_200_2011/"
)
CUB_LICENSE = (
    "CUB-200-2011: images from Flickr, owned by their photographers; for non-commercial research and educational use "
    "(https://www.vision.caltech.edu/datasets/cub_200_2011/)"
)
CUB_CITATION = (
    "Wah, C., Branson, S., Welinder, P., Perona, P., and Belongie, S. (2011). The Caltech-UCSD Birds-200-2011 Dataset. "
    "Tech. report CNS-TR-2011-001, California Institute of Technology. Split: Chen, W.-Y., Liu, Y.-C., Kira, Z., Wang, "
    "Y.-C. F., and Huang, J.-B. (2019). A Closer Look at Few-shot Classification. ICLR (after Hilliard et al., 2018)."
)
SPLIT_SOURCE = (
    "github.com/wyharveychen/CloserLookFewShot filelists/CUB/write_CUB_filelist.py (sorted class folders i: train "
    "i % 2 == 0, val i % 4 == 1, test i % 4 == 3) = github.com/tristandeleu/pytorch-meta torchmeta/datasets/assets/cub/"
)


def _table(where: str, data: bytes, columns: int) -> dict[int, list[str]]:
    """A CUB list: '<id> <value> ...' per line, ids unique."""
    table: dict[int, list[str]] = {}
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != columns or not fields[0].isdigit() or int(fields[0]) in table:
            raise DataImportError(f"{where}: line {number} is not '<id> ...' with {columns} fields and a new id: {line[:80]!r}")
        table[int(fields[0])] = fields[1:]
    return table


class CubLists:
    """images.txt, classes.txt, image_class_labels.txt (and bounding_boxes.txt), checked against each other and
    against the shipped split."""

    def __init__(self, tree: InputTree | TarTree, bounding_boxes: bool) -> None:
        seen: list[str] = []

        def wanted(path: str) -> bool:
            seen.append(path)
            return posixpath.basename(path) in LIST_FILES

        files: dict[str, tuple[str, bytes]] = {}
        for file, data in tree.members(wanted):
            name = posixpath.basename(file.path)
            if name in files:
                raise DataImportError(f"{file.where}: a second {name} (the first: {files[name][0]}); give one CUB-200-2011")
            files[name] = (file.where, data)
        needed = LIST_FILES if bounding_boxes else LIST_FILES[:3]
        missing = [name for name in needed if name not in files]
        if missing:
            pickles = [p for p in seen if is_pickle_name(p)]
            if pickles:
                refuse_pickle(f"{tree.uri}!{pickles[0]}", USE_RAW)
            raise DataImportError(f"{tree.uri}: no {', '.join(missing)} in it; {USE_RAW}")
        self.images = {i: v[0] for i, v in _table(*files["images.txt"], 2).items()}  # id → <class folder>/<file>
        classes = {i: v[0] for i, v in _table(*files["classes.txt"], 2).items()}
        labels = _table(*files["image_class_labels.txt"], 2)
        expected = {row[0] for split in SPLITS for row in split_classes("cub")[split]}
        if set(classes.values()) != expected:
            unknown = sorted(set(classes.values()) - expected) or sorted(expected - set(classes.values()))
            raise DataImportError(f"{files['classes.txt'][0]}: its classes differ from CUB-200-2011's 200 ({unknown[:3]} ...)")
        for image_id, path in self.images.items():
            label = labels.get(image_id)
            if label is None or not label[0].isdigit() or classes.get(int(label[0])) != path.split("/")[0]:
                raise DataImportError(
                    f"{files['image_class_labels.txt'][0]}: image {image_id} ({path}) is not labelled with its folder's class"
                )
        self.boxes: dict[str, tuple[float, float, float, float]] = {}
        if bounding_boxes:
            where = files["bounding_boxes.txt"][0]
            table = _table(where, files["bounding_boxes.txt"][1], 5)
            for image_id, path in self.images.items():
                if image_id not in table:
                    raise DataImportError(f"{where}: no box for image {image_id} ({path})")
                x, y, w, h = (float(v) for v in table[image_id])
                self.boxes[path] = (x, y, x + w, y + h)
        self.inputs = [files[name][0] for name in needed]


def _relative(path: str) -> str | None:
    """'<class folder>/<file>' of a path [...]/images/<class folder>/<file>, else None."""
    parts = path.split("/")
    return "/".join(parts[-2:]) if len(parts) >= 3 and parts[-3] == "images" else None


def _decode(preprocessing: ImagePreprocessing, data: bytes, where: str, box: tuple[float, float, float, float] | None) -> np.ndarray:
    with open_image(data, where) as image:
        try:
            image.load()
            return preprocessing.apply(image.crop(box) if box else image)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataImportError(f"{where}: not a readable image ({exc})") from exc


def _decode_all(tree: InputTree | TarTree, lists: CubLists, preprocessing: ImagePreprocessing, progress: bool) -> dict[str, np.ndarray]:
    """Every listed image, preprocessed, by '<class folder>/<file>': one pass over the input, decoded in threads."""
    listed = set(lists.images.values())
    decoded: dict[str, np.ndarray] = {}
    started: set[str] = set()
    window = 64 * (os.cpu_count() or 1)  # images decoded ahead of the stream: bounds the encoded bytes held
    pending: deque[tuple[str, Future]] = deque()
    with (
        ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
        tqdm(total=len(listed), desc=f"read {tree.name}", unit="img", disable=not progress) as bar,
    ):
        for file, data in tree.members(lambda p: _relative(p) in listed):
            relative = _relative(file.path)
            assert relative is not None
            if relative in started:
                raise DataImportError(f"{file.where}: a second copy of images/{relative}")
            started.add(relative)
            pending.append((relative, pool.submit(_decode, preprocessing, data, file.where, lists.boxes.get(relative))))
            while len(pending) > window:
                done, future = pending.popleft()
                decoded[done] = future.result()
                bar.update(1)
        while pending:
            done, future = pending.popleft()
            decoded[done] = future.result()
            bar.update(1)
    absent = sorted(listed - set(decoded))
    if absent:
        raise DataImportError(f"{tree.uri}: {len(absent)} of the images in images.txt are not in it (first: images/{absent[0]})")
    return decoded


def _holder(images: list[np.ndarray], sources: list[str]):
    return lambda preprocessing: (images, sources)


def import_cub(
    root: str,
    out: str,
    *,
    preprocessing: ImagePreprocessing | None = None,
    bounding_boxes: bool = False,
    file_format: str = "arrow",
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> dict[str, Manifest]:
    """CUB-200-2011's train/val/test (100/50/50 species) at <out>/train, <out>/val, <out>/test.
    Class names are the class folders ('001.Black_footed_Albatross'); each class's group is its split."""
    refuse_pickle(root, USE_RAW)
    preprocessing = preprocessing or benchmark_preprocessing()
    tree = open_tree(root, storage_options)
    try:
        lists = CubLists(tree, bounding_boxes)
        decoded = _decode_all(tree, lists, preprocessing, progress)
    finally:
        tree.close()
    by_class: dict[str, list[str]] = {}
    for _, path in sorted(lists.images.items()):
        by_class.setdefault(path.split("/")[0], []).append(path)
    classes: dict[str, list[ImportClass]] = {}
    for split in SPLITS:
        classes[split] = []
        for (folder,) in sorted(split_classes("cub")[split]):
            paths = by_class.get(folder, [])
            if not paths:
                raise DataImportError(f"{tree.uri}: images.txt lists no images of class {folder}")
            sources = [f"images/{p}" for p in paths]
            classes[split].append(ArrayClass(folder, split, tree.uri, len(paths), _holder([decoded[p] for p in paths], sources)))
    dataset = {
        "name": "cub",
        "version": "CUB_200_2011-chen-2019" + ("-cropped" if bounding_boxes else ""),
        "inputs": lists.inputs,
        "bounding_boxes": bounding_boxes,
        "split_source": SPLIT_SOURCE,
        "license": CUB_LICENSE,
        "citation": CUB_CITATION,
        "homepage": "https://www.vision.caltech.edu/datasets/cub_200_2011/",
    }
    return write_splits(
        classes, out, dataset=dataset, preprocessing=preprocessing, file_format=file_format,
        overwrite=overwrite, storage_options=storage_options, progress=progress,
    )
