"""Every path in metadist is an fsspec URI: local paths, file://, memory://, s3://, gs:// ...

No code outside this module assumes a local filesystem; local files only get a faster path (memory maps).
"""

from __future__ import annotations

import os
import posixpath

import fsspec
from fsspec.implementations.local import LocalFileSystem


def filesystem(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem holding `uri` and the path inside it."""
    uri = os.path.expanduser(uri) if "://" not in uri else uri
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/', keeping the scheme of `base`."""
    return posixpath.join(base.rstrip("/"), *parts)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)
