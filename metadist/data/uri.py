"""Every path in metadist is an fsspec URI: local paths, file://, memory://, s3://, gs:// ...

No code outside this module assumes a local filesystem; local files only get a faster path (memory maps).
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from metadist.errors import StorageError

# HTTP statuses that mean "no such file"; any other error status is the server's refusal, not an absence.
_ABSENT_STATUSES = (404, 410)


def filesystem(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem holding `uri` and the path inside it; a URI no filesystem can take is a StorageError."""
    uri = os.path.expanduser(uri) if "://" not in uri else uri
    try:
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    except ValueError as exc:  # fsspec: "Protocol not known: foo"
        raise StorageError(
            f"{uri}: not a URI fsspec can open ({exc}); use a local path, file://, memory://, s3://, gs://, http(s):// ..."
        ) from exc
    except ImportError as exc:  # a known protocol whose filesystem is not installed ("Install s3fs to access S3")
        raise StorageError(f"{uri}: {exc}") from exc
    except TypeError as exc:  # storage_options the filesystem does not take
        raise StorageError(f"{uri}: storage_options do not fit its filesystem ({exc})") from exc
    return fs, path


def file_info(fs: fsspec.AbstractFileSystem, path: str, where: str) -> dict[str, Any] | None:
    """fsspec's info for `path` (size, type ...), or None when there is no such file or folder.

    A store that cannot be reached, or refuses, is a StorageError naming `where`: never "does not exist". fsspec's
    HTTP filesystem reports a refused connection as FileNotFoundError too; its cause tells the two apart.
    """
    try:
        return fs.info(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        cause = exc.__cause__
        if cause is None or isinstance(cause, FileNotFoundError):
            return None
        status = getattr(cause, "status", None)
        if status in _ABSENT_STATUSES:
            return None
        if status is not None:
            raise StorageError(f"{where}: the server answered HTTP {status} ({getattr(cause, 'message', cause)})") from exc
        if isinstance(cause, _connection_errors()):
            raise StorageError(f"{where}: cannot be reached ({_reason(cause)})") from exc
        return None  # a filesystem's own "not found" (s3fs: the translated ClientError)
    except PermissionError as exc:
        raise StorageError(f"{where}: permission denied ({exc})") from exc
    except _connection_errors() as exc:
        raise StorageError(f"{where}: cannot be reached ({_reason(exc)})") from exc


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the store did not answer: OS-level ones, and those of aiohttp (http://) and botocore
    (s3://) when they are installed."""
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        import aiohttp

        errors.append(aiohttp.ClientConnectionError)
    except ImportError:
        pass
    try:
        import botocore.exceptions

        errors += [botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError]
    except ImportError:
        pass
    return tuple(errors)


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/', keeping the scheme of `base`."""
    return posixpath.join(base.rstrip("/"), *parts)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)
