"""Omniglot (Lake et al., 2015): the official zip files or their extracted folders.

Layout: [<split>/]<alphabet>/<character>/<drawing>.png, 105×105 black strokes on white. The same code reads the
"minimal" splits (images_background_small1/2) and the full images_background / images_evaluation.
The MAML-literature preprocessing (28×28 LANCZOS, strokes = 1) is the default and is recorded in the manifest.
"""

from __future__ import annotations

from collections import defaultdict

from metadist.data.images import ImagePreprocessing
from metadist.data.importers.common import ClassFiles, write_classes
from metadist.data.importers.tree import InputTree
from metadist.data.manifest import Manifest
from metadist.errors import DataImportError

CITATION = (
    "Lake, B. M., Salakhutdinov, R., and Tenenbaum, J. B. (2015). Human-level concept learning through "
    "probabilistic program induction. Science, 350(6266), 1332-1338."
)
MAML_PREPROCESSING = ImagePreprocessing(mode="L", size=(28, 28), resample="lanczos", invert=True)


def omniglot_classes(tree: InputTree) -> list[ClassFiles]:
    by_class: dict[tuple[str, str], list] = defaultdict(list)
    for file in tree.files():
        parts = file.path.split("/")
        if len(parts) < 3 or not parts[-1].lower().endswith(".png"):
            continue
        by_class[(parts[-3], parts[-2])].append(file)
    if not by_class:
        raise DataImportError(f"{tree.uri}: no Omniglot drawings found; expected <alphabet>/<character>/<drawing>.png")
    return [
        ClassFiles(name=f"{alphabet}/{character}", group=alphabet, tree=tree, files=tuple(files))
        for (alphabet, character), files in sorted(by_class.items())
    ]


def import_omniglot(
    inputs: list[str],
    out: str,
    *,
    preprocessing: ImagePreprocessing = MAML_PREPROCESSING,
    file_format: str = "arrow",
    overwrite: bool = False,
    storage_options: dict | None = None,
    progress: bool = True,
) -> Manifest:
    """Import one or more Omniglot zips/folders into one shard set at `out`."""
    trees = [InputTree(uri, storage_options) for uri in inputs]
    try:
        classes = [c for tree in trees for c in omniglot_classes(tree)]
        dataset = {
            "name": "omniglot",
            "version": "+".join(t.name for t in trees),
            "inputs": [t.name for t in trees],
            "license": "MIT",
            "citation": CITATION,
            "homepage": "https://github.com/brendenlake/omniglot",
        }
        return write_classes(
            classes,
            out,
            dataset=dataset,
            preprocessing=preprocessing,
            file_format=file_format,
            overwrite=overwrite,
            storage_options=storage_options,
            progress=progress,
        )
    finally:
        for tree in trees:
            tree.close()
