"""A generic image folder: <root>/<class>/<image> or <root>/<group>/<class>/<image> (folder or zip)."""

from __future__ import annotations

from collections import defaultdict

from metadist.data.images import ImagePreprocessing
from metadist.data.importers.common import ClassFiles, write_classes
from metadist.data.importers.tree import InputTree
from metadist.data.manifest import Manifest
from metadist.errors import DataImportError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_GROUP = "default"  # the group of every class in a two-level (<class>/<image>) folder


def folder_classes(tree: InputTree) -> list[ClassFiles]:
    by_class: dict[tuple[str, str], list] = defaultdict(list)
    depth_seen: dict[int, str] = {}
    for file in tree.files():
        if not file.path.lower().endswith(IMAGE_SUFFIXES):
            continue
        parts = file.path.split("/")
        if len(parts) not in (2, 3):
            raise DataImportError(f"{file.where}: images must sit at <class>/<image> or <group>/<class>/<image>")
        depth_seen.setdefault(len(parts), file.where)
        if len(depth_seen) > 1:
            raise DataImportError(
                f"{tree.uri}: mixes <class>/<image> ({depth_seen[2]}) and <group>/<class>/<image> ({depth_seen[3]})"
            )
        group = parts[0] if len(parts) == 3 else DEFAULT_GROUP
        name = "/".join(parts[:-1])
        by_class[(group, name)].append(file)
    if not by_class:
        raise DataImportError(f"{tree.uri}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return [ClassFiles(name=name, group=group, tree=tree, files=tuple(files)) for (group, name), files in sorted(by_class.items())]


def import_image_folder(
    root: str,
    out: str,
    *,
    preprocessing: ImagePreprocessing,
    store: str = "tensor",
    name: str | None = None,
    file_format: str = "arrow",
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> Manifest:
    tree = InputTree(root, storage_options)
    try:
        dataset = {"name": name or tree.name, "version": tree.name, "inputs": [tree.name]}
        return write_classes(
            folder_classes(tree),
            out,
            dataset=dataset,
            preprocessing=preprocessing,
            store=store,
            file_format=file_format,
            overwrite=overwrite,
            storage_options=storage_options,
            progress=progress,
        )
    finally:
        tree.close()
