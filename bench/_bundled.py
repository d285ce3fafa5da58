"""The bundled Omniglot zips, extracted as image folders for the learn2learn side of the benchmarks."""

from __future__ import annotations

import zipfile
from pathlib import Path


def extract_bundled(name: str, into: Path) -> Path:
    """Extract the bundled zip `name` ("omniglot-small1", "omniglot-small2"), the images metadist's shard set of
    that name was imported from; return its <alphabet>/<character> folder."""
    from metadist.data.bundled import BUNDLED_ZIPS, bundled_file

    with zipfile.ZipFile(bundled_file(BUNDLED_ZIPS[name])) as archive:
        archive.extractall(into)
    return into / Path(BUNDLED_ZIPS[name]).stem
