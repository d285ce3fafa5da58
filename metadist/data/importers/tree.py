"""An import input as a tree of files: a folder, a zip archive or a tar archive, on any fsspec URI."""

from __future__ import annotations

import posixpath
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from metadist.data.uri import file_info, filesystem
from metadist.errors import DataImportError


@dataclass(frozen=True)
class InputFile:
    path: str  # relative to the input's root, '/'-separated
    where: str  # how errors name it: "URI" or "ZIP_URI!member"


class InputTree:
    """Lists files (sorted, so imports are reproducible) and reads their bytes."""

    def __init__(self, uri: str, storage_options: dict | None = None) -> None:
        self.uri = uri
        self.fs, self.root = filesystem(uri, storage_options)
        if file_info(self.fs, self.root, uri) is None:  # a store that cannot be reached says so
            raise DataImportError(f"{uri}: does not exist")
        self._zip: zipfile.ZipFile | None = None
        if self.fs.isfile(self.root):
            try:
                self._zip = zipfile.ZipFile(self.fs.open(self.root, "rb"))
            except zipfile.BadZipFile as exc:
                raise DataImportError(f"{uri}: not a folder and not a readable zip archive ({exc})") from exc
        # Importers read from several threads. Interleaved reads through one ZipFile broke on Python 3.12
        # ("Overlapped entries ... possible zip bomb" on the bundled Omniglot), so each thread opens its own.
        self._local = threading.local()
        self._handles: list[zipfile.ZipFile] = []
        self._handles_lock = threading.Lock()

    @property
    def name(self) -> str:
        base = posixpath.basename(self.root.rstrip("/"))
        return base[:-4] if base.endswith(".zip") else base

    def files(self) -> Iterator[InputFile]:
        if self._zip is not None:
            for member in sorted(self._zip.namelist()):
                if not member.endswith("/") and not _hidden(member):
                    yield InputFile(member, f"{self.uri}!{member}")
            return
        root = self.root.rstrip("/")
        for full in sorted(self.fs.find(root)):
            rel = posixpath.relpath(full, root)
            if not _hidden(rel):
                yield InputFile(rel, f"{self.uri.rstrip('/')}/{rel}")

    def members(self, wanted: Callable[[str], bool]) -> Iterator[tuple[InputFile, bytes]]:
        """The files whose path `wanted` accepts, with their bytes, in sorted order (as TarTree.members)."""
        for file in self.files():
            if wanted(file.path):
                yield file, self.read(file)

    def read(self, file: InputFile) -> bytes:
        try:
            if self._zip is not None:
                return self._thread_zip().read(file.path)
            with self.fs.open(posixpath.join(self.root.rstrip("/"), file.path), "rb") as f:
                return f.read()
        except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
            raise DataImportError(f"{file.where}: cannot be read ({exc})") from exc

    def _thread_zip(self) -> zipfile.ZipFile:
        handle = getattr(self._local, "zip", None)
        if handle is None:
            handle = self._local.zip = zipfile.ZipFile(self.fs.open(self.root, "rb"))
            with self._handles_lock:
                self._handles.append(handle)
        return handle

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        with self._handles_lock:
            for handle in self._handles:
                handle.close()
            self._handles.clear()


TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class TarTree:
    """A tar archive, plain or compressed, read in streaming passes.

    A compressed stream cannot seek back, so random access would decompress it again for every member read out of
    order: each call to `members` reads the archive once from the start instead, and yields members in archive order.
    """

    def __init__(self, uri: str, storage_options: dict | None = None) -> None:
        self.uri = uri
        self.fs, self.root = filesystem(uri, storage_options)
        if file_info(self.fs, self.root, uri) is None:
            raise DataImportError(f"{uri}: does not exist")

    @property
    def name(self) -> str:
        base = posixpath.basename(self.root.rstrip("/"))
        for suffix in TAR_SUFFIXES:
            if base.lower().endswith(suffix):
                return base[: -len(suffix)]
        return base

    def members(self, wanted: Callable[[str], bool]) -> Iterator[tuple[InputFile, bytes]]:
        """The regular files whose path `wanted` accepts, with their bytes, in archive order (one pass)."""
        try:
            with self.fs.open(self.root, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
                for info in archive:
                    path = posixpath.normpath(info.name).lstrip("/")
                    if not info.isfile() or path.startswith("..") or _hidden(path) or not wanted(path):
                        continue
                    member = archive.extractfile(info)
                    assert member is not None  # a regular file always has contents
                    yield InputFile(path, f"{self.uri}!{path}"), member.read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DataImportError(f"{self.uri}: not a readable tar archive ({exc})") from exc

    def close(self) -> None:
        pass


def open_tree(uri: str, storage_options: dict | None = None) -> InputTree | TarTree:
    """A tar archive (by its name) as a TarTree; a folder or a zip archive as an InputTree."""
    if uri.rstrip("/").lower().endswith(TAR_SUFFIXES):
        return TarTree(uri, storage_options)
    return InputTree(uri, storage_options)


def _hidden(path: str) -> bool:
    # macOS archives carry __MACOSX/ and ._ files; dotfiles are never examples.
    return any(part.startswith(".") or part == "__MACOSX" for part in path.split("/"))
