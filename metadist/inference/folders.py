"""Reading a user's few-shot problem from disk: a support folder `<class>/<images>` and query files or folders."""

from __future__ import annotations

import posixpath

from metadist.data.uri import filesystem
from metadist.errors import PredictionError
from metadist.inference.classifier import named

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _is_image_name(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in IMAGE_SUFFIXES


def read_support(uri: str) -> tuple[list[bytes], list[str]]:
    """Images and labels of a support folder: one sub-folder per class, its images inside (any size or format)."""
    fs, root = filesystem(uri)
    if not fs.isdir(root):
        raise PredictionError(f"{uri}: the support set must be a folder with one sub-folder per class")
    images, labels = [], []
    classes = sorted(p for p in fs.ls(root, detail=False) if fs.isdir(p) and not posixpath.basename(p.rstrip("/")).startswith("."))
    for class_dir in classes:
        label = posixpath.basename(class_dir.rstrip("/"))
        files = sorted(p for p in fs.ls(class_dir, detail=False) if fs.isfile(p) and not posixpath.basename(p).startswith("."))
        if not files:
            raise PredictionError(f"{uri}: class folder {label!r} holds no files")
        for path in files:
            images.append(named(fs.cat_file(path), path))
            labels.append(label)
    if len(classes) < 2:
        raise PredictionError(f"{uri}: found {len(classes)} class folder(s); a few-shot task needs at least 2 (<class>/<images>)")
    return images, labels


def read_queries(uris: list[str]) -> tuple[list[bytes], list[str]]:
    """Query images from files and/or folders (a folder contributes its image files, sorted)."""
    images, sources = [], []
    for uri in uris:
        fs, path = filesystem(uri)
        if fs.isdir(path):
            files = sorted(p for p in fs.ls(path, detail=False) if fs.isfile(p) and _is_image_name(p))
            if not files:
                raise PredictionError(f"{uri}: query folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif fs.isfile(path):
            files = [path]
        else:
            raise PredictionError(f"{uri}: no such query file or folder")
        for f in files:
            images.append(named(fs.cat_file(f), f))
            sources.append(f)
    return images, sources
