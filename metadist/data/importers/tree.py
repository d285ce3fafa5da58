"""An import input as a tree of files: a folder or a zip archive, on any fsspec URI."""

from __future__ import annotations

import posixpath
import threading
import zipfile
from collections.abc import Iterator
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


def _hidden(path: str) -> bool:
    # macOS archives carry __MACOSX/ and ._ files; dotfiles are never examples.
    return any(part.startswith(".") or part == "__MACOSX" for part in path.split("/"))
