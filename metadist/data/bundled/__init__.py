"""The embedded default data set: Omniglot's two "minimal" background splits, shipped with the package.

`bundled://omniglot-small1` names a shard set imported from the bundled zip on first use into the local cache
($METADIST_CACHE, else ~/.cache/metadist), so nothing needs a download. The development protocol meta-trains on
small1 and meta-tests on the three alphabets of small2 that small1 lacks (106 characters).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from importlib import resources
from pathlib import Path

from metadist.config import SMALL2_NEW_ALPHABETS  # noqa: F401  (re-exported: the development protocol's test alphabets)
from metadist.data import schema
from metadist.data.importers.omniglot import MAML_PREPROCESSING, import_omniglot
from metadist.errors import ShardError

SCHEME = "bundled://"
BUNDLED_ZIPS = {
    "omniglot-small1": "omniglot/images_background_small1.zip",
    "omniglot-small2": "omniglot/images_background_small2.zip",
}


def cache_dir() -> Path:
    return Path(os.environ.get("METADIST_CACHE", Path.home() / ".cache" / "metadist"))


def bundled_file(relative: str) -> Path:
    return Path(str(resources.files("metadist.data.bundled").joinpath(relative)))


def ensure_bundled(name: str, progress: bool = True) -> str:
    """Local URI of the bundled shard set `name`, importing it into the cache the first time."""
    if name not in BUNDLED_ZIPS:
        raise ShardError(f"{SCHEME}{name}: unknown bundled data set; choose one of {sorted(BUNDLED_ZIPS)}")
    source = bundled_file(BUNDLED_ZIPS[name])
    # The key changes with the input bytes, the shard format and the preprocessing, so a stale cache is never read.
    key = hashlib.sha256(
        source.read_bytes() + f"{schema.FORMAT_VERSION}{MAML_PREPROCESSING}".encode()
    ).hexdigest()[:12]
    target = cache_dir() / "shards" / f"{name}-{key}"
    if (target / schema.MANIFEST_NAME).exists():
        return str(target)
    # Import beside the target, then rename: processes racing on first use (Ray workers on one node) each
    # build a private copy and exactly one rename wins; nobody ever reads a half-written set.
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    try:
        import_omniglot([str(source)], str(staging), progress=progress)
        try:
            staging.rename(target)
        except OSError:
            if not (target / schema.MANIFEST_NAME).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def resolve_uri(uri: str, progress: bool = True) -> str:
    """Map bundled://NAME to its cached shard set; pass every other URI through."""
    return ensure_bundled(uri[len(SCHEME):], progress) if uri.startswith(SCHEME) else uri
