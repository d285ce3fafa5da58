"""Class splits: which classes of a shard set a sampler may draw from (by group or by class name)."""

from __future__ import annotations

import numpy as np

from metadist.config import SplitConfig
from metadist.data.manifest import Manifest
from metadist.errors import EpisodeError


def select_classes(manifest: Manifest, split: SplitConfig, where: str) -> np.ndarray:
    """Indices into manifest.classes, ascending. Unknown names are errors (a typo must not empty a split)."""
    groups = manifest.groups()
    for field, names in (("split.groups", split.groups or []), ("split.exclude_groups", split.exclude_groups)):
        unknown = sorted(set(names) - set(groups))
        if unknown:
            raise EpisodeError(f"{where}: {field} names unknown group(s) {unknown}; the shard set has {sorted(groups)}")
    if split.classes is not None:
        unknown = sorted(set(split.classes) - set(manifest.class_index))
        if unknown:
            raise EpisodeError(f"{where}: split.classes names unknown class(es) {unknown[:5]}{'...' if len(unknown) > 5 else ''}")
    keep_groups = set(split.groups) if split.groups is not None else None
    drop_groups = set(split.exclude_groups)
    keep_classes = set(split.classes) if split.classes is not None else None
    selected = [
        i
        for i, c in enumerate(manifest.classes)
        if (keep_groups is None or c.group in keep_groups)
        and c.group not in drop_groups
        and (keep_classes is None or c.name in keep_classes)
    ]
    if not selected:
        raise EpisodeError(f"{where}: the split {split.model_dump(exclude_defaults=True)} selects no class")
    return np.asarray(selected, dtype=np.int64)
