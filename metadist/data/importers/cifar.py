"""CIFAR-FS and FC100 from CIFAR-100's binary version, with the canonical class splits.

Input: cifar-100-binary.tar.gz as downloaded, or its files extracted (folder or zip): train.bin and test.bin (records
of 1 byte coarse label, 1 byte fine label, 3,072 bytes of pixels: the 32×32 red, green and blue planes, rows in
order), fine_label_names.txt and coarse_label_names.txt. Each class takes its 500 train and 100 test images (600).
The python version (cifar-100-python.tar.gz) is pickled and refused, never unpickled.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

import numpy as np
from PIL import Image

from metadist.data.images import ImagePreprocessing
from metadist.data.importers.common import (
    ArrayClass,
    ImportClass,
    benchmark_preprocessing,
    is_pickle_name,
    refuse_pickle,
    write_splits,
)
from metadist.data.importers.split_lists import SPLITS, split_classes
from metadist.data.importers.tree import open_tree
from metadist.data.manifest import Manifest
from metadist.errors import DataImportError

RECORD_BYTES = 2 + 3 * 32 * 32  # coarse label, fine label, R, G and B planes
BINARY_FILES = ("train.bin", "test.bin", "fine_label_names.txt", "coarse_label_names.txt")
USE_BINARY = (
    "use CIFAR-100's binary version, cifar-100-binary.tar.gz (train.bin, test.bin, fine_label_names.txt, "
    "coarse_label_names.txt) from https://www.cs.toronto.edu/~kriz/cifar.html"
)
CIFAR_LICENSE = "no licence stated by its authors; cite Krizhevsky (2009) (https://www.cs.toronto.edu/~kriz/cifar.html)"
CIFAR_CITATION = "Krizhevsky, A. (2009). Learning Multiple Layers of Features from Tiny Images. Tech. report, University of Toronto."
CIFAR_FS_CITATION = (
    "Bertinetto, L., Henriques, J. F., Torr, P. H. S., and Vedaldi, A. (2019). Meta-learning with differentiable "
    "closed-form solvers. ICLR."
)
FC100_CITATION = (
    "Oreshkin, B. N., Rodriguez, P., and Lacoste, A. (2018). TADAM: Task dependent adaptive metric for improved few-shot "
    "learning. NeurIPS."
)
SPLIT_SOURCES = {
    "cifar-fs": "github.com/tristandeleu/pytorch-meta torchmeta/datasets/assets/cifar100/cifar-fs/{train,val,test}.json "
    "(Bertinetto et al.'s split files of github.com/bertinetto/r2d2)",
    "fc100": "github.com/tristandeleu/pytorch-meta torchmeta/datasets/assets/cifar100/fc100/{train,val,test}.json "
    "(Oreshkin et al.'s superclass split)",
}


class Cifar100:
    """CIFAR-100's 60,000 records in memory (184 MB), by fine class: train.bin's records, then test.bin's."""

    def __init__(self, root: str, storage_options: dict | None) -> None:
        _refuse_python_version(root)
        tree = open_tree(root, storage_options)
        self.uri = tree.uri
        seen: list[str] = []

        def wanted(path: str) -> bool:
            seen.append(path)
            return posixpath.basename(path) in BINARY_FILES

        files: dict[str, tuple[str, bytes]] = {}
        try:
            for file, data in tree.members(wanted):
                name = posixpath.basename(file.path)
                if name in files:
                    raise DataImportError(f"{file.where}: a second {name} (the first: {files[name][0]}); give one CIFAR-100")
                files[name] = (file.where, data)
        finally:
            tree.close()
        missing = [name for name in BINARY_FILES if name not in files]
        if missing:
            for path in seen:
                _refuse_python_version(f"{tree.uri}!{path}")
            if any(posixpath.basename(p).startswith("data_batch_") for p in seen):
                raise DataImportError(f"{tree.uri}: CIFAR-10, not CIFAR-100; {USE_BINARY}")
            raise DataImportError(f"{tree.uri}: no {', '.join(missing)} in it; {USE_BINARY}")
        self.inputs = [files[name][0] for name in BINARY_FILES]
        self.names_where = {"fine": files["fine_label_names.txt"][0], "coarse": files["coarse_label_names.txt"][0]}
        self.fine_names = _names(*files["fine_label_names.txt"], 100)
        self.coarse_names = _names(*files["coarse_label_names.txt"], 20)
        parts = [_records(*files[name]) for name in ("train.bin", "test.bin")]
        records = np.concatenate([p for p, _ in parts])
        self.sources = np.array([f"{name}#{i}" for name, (p, _) in zip(("train.bin", "test.bin"), parts) for i in range(len(p))])
        self.coarse = records[:, 0]
        self.fine = records[:, 1]
        for labels, names, kind in ((self.fine, self.fine_names, "fine"), (self.coarse, self.coarse_names, "coarse")):
            if labels.size and labels.max() >= len(names):
                i = int(np.argmax(labels >= len(names)))
                raise DataImportError(f"{self.uri}: record {self.sources[i]} has {kind} label {labels[i]}; there are {len(names)}")
        self.pixels = records[:, 2:].reshape(-1, 3, 32, 32)

    def coarse_of(self, fine: int) -> int:
        """The superclass of fine class `fine`; every record of it must agree."""
        labels = np.unique(self.coarse[self.fine == fine])
        if len(labels) != 1:
            raise DataImportError(
                f"{self.uri}: class {self.fine_names[fine]!r} has records of superclasses "
                f"{[self.coarse_names[c] for c in labels]}; a CIFAR-100 class belongs to exactly one"
            )
        return int(labels[0])

    def array_class(self, fine: int, group: str) -> ArrayClass:
        rows = np.flatnonzero(self.fine == fine)
        name = self.fine_names[fine]
        if len(rows) == 0:
            raise DataImportError(f"{self.uri}: no records of class {name!r}")
        return ArrayClass(name, group, self.uri, len(rows), self._maker(rows))

    def _maker(self, rows: np.ndarray) -> Callable[[ImagePreprocessing], tuple[list[np.ndarray], list[str]]]:
        def make(preprocessing: ImagePreprocessing) -> tuple[list[np.ndarray], list[str]]:
            images = [preprocessing.apply(Image.fromarray(self.pixels[i].transpose(1, 2, 0))) for i in rows]
            return images, [str(self.sources[i]) for i in rows]

        return make


def _refuse_python_version(where: str) -> None:
    base = posixpath.basename(where.rstrip("/")).lower()
    if "cifar-100-python" in where.lower() or "cifar-10-python" in where.lower() or base == "cifar-100-python":
        raise DataImportError(f"{where}: CIFAR's python version is pickled; metadist never unpickles data (it can run code): {USE_BINARY}")
    if is_pickle_name(where):
        refuse_pickle(where, USE_BINARY)


def _names(where: str, data: bytes, expected: int) -> list[str]:
    names = [line.strip() for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if len(names) != expected or len(set(names)) != expected:
        raise DataImportError(f"{where}: {len(names)} label names ({len(set(names))} different); CIFAR-100 has {expected}")
    return names


def _records(where: str, data: bytes) -> tuple[np.ndarray, str]:
    if len(data) % RECORD_BYTES:
        raise DataImportError(
            f"{where}: {len(data):,} bytes, not a whole number of {RECORD_BYTES:,}-byte CIFAR-100 records (CIFAR-10's are "
            f"{RECORD_BYTES - 1:,}); {USE_BINARY}"
        )
    return np.frombuffer(data, np.uint8).reshape(-1, RECORD_BYTES), where


def _unknown(cifar: Cifar100, names: set[str], known: list[str], what: str) -> None:
    unknown = sorted(names - set(known))
    if unknown:
        raise DataImportError(f"{cifar.names_where[what]}: no {what} label(s) {unknown[:5]}; is this CIFAR-100?")


def _import(
    benchmark: str,
    classes: Callable[[Cifar100], dict[str, list[ImportClass]]],
    citation: str,
    root: str,
    out: str,
    preprocessing: ImagePreprocessing | None,
    file_format: str,
    overwrite: bool,
    storage_options: dict | None,
    progress: bool,
) -> dict[str, Manifest]:
    cifar = Cifar100(root, storage_options)
    dataset = {
        "name": benchmark,
        "version": {"cifar-fs": "bertinetto-2019", "fc100": "oreshkin-2018"}[benchmark],
        "inputs": cifar.inputs,
        "split_source": SPLIT_SOURCES[benchmark],
        "license": CIFAR_LICENSE,
        "citation": f"{citation} Images: {CIFAR_CITATION}",
        "homepage": "https://www.cs.toronto.edu/~kriz/cifar.html",
    }
    return write_splits(
        classes(cifar), out, dataset=dataset, preprocessing=preprocessing or benchmark_preprocessing(),
        file_format=file_format, overwrite=overwrite, storage_options=storage_options, progress=progress,
    )


def _cifar_fs_classes(cifar: Cifar100) -> dict[str, list[ImportClass]]:
    rows = split_classes("cifar-fs")
    _unknown(cifar, {fine for split in SPLITS for fine, _ in rows[split]}, cifar.fine_names, "fine")
    classes: dict[str, list[ImportClass]] = {}
    for split in SPLITS:
        chosen = sorted((cifar.coarse_names[cifar.coarse_of(cifar.fine_names.index(f))], f) for f, _ in rows[split])
        classes[split] = [cifar.array_class(cifar.fine_names.index(fine), coarse) for coarse, fine in chosen]
    return classes


def _fc100_classes(cifar: Cifar100) -> dict[str, list[ImportClass]]:
    rows = split_classes("fc100")
    _unknown(cifar, {row[0] for split in SPLITS for row in rows[split]}, cifar.coarse_names, "coarse")
    coarse_of = {fine: cifar.coarse_names[cifar.coarse_of(fine)] for fine in range(len(cifar.fine_names))}
    classes: dict[str, list[ImportClass]] = {}
    for split in SPLITS:
        superclasses = {row[0] for row in rows[split]}
        chosen = sorted((coarse_of[f], cifar.fine_names[f], f) for f in coarse_of if coarse_of[f] in superclasses)
        classes[split] = [cifar.array_class(f, coarse) for coarse, _, f in chosen]
    return classes


def import_cifar_fs(
    root: str,
    out: str,
    *,
    preprocessing: ImagePreprocessing | None = None,
    file_format: str = "arrow",
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> dict[str, Manifest]:
    """CIFAR-FS's train/val/test (64/16/20 CIFAR-100 classes, 600 images each) at <out>/train, <out>/val, <out>/test.
    Class names are CIFAR-100's fine labels; each class's group is its superclass."""
    return _import("cifar-fs", _cifar_fs_classes, CIFAR_FS_CITATION, root, out, preprocessing, file_format, overwrite,
                   storage_options, progress)


def import_fc100(
    root: str,
    out: str,
    *,
    preprocessing: ImagePreprocessing | None = None,
    file_format: str = "arrow",
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> dict[str, Manifest]:
    """FC100's train/val/test (CIFAR-100's superclasses split 12/4/4: 60/20/20 classes) at <out>/train, val, test.
    Class names are CIFAR-100's fine labels; each class's group is its superclass."""
    return _import("fc100", _fc100_classes, FC100_CITATION, root, out, preprocessing, file_format, overwrite,
                   storage_options, progress)
