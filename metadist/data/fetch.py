"""`metadist data fetch omniglot`: download the full Omniglot set from its official location and import it.

Only http(s):// and file:// base URLs are used (urllib); tests point `base_url` at local files or a loopback
server, never at the network.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from metadist.data.importers.omniglot import import_omniglot
from metadist.data.manifest import Manifest
from metadist.errors import DataImportError

OMNIGLOT_BASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
OMNIGLOT_ARCHIVES = ("images_background", "images_evaluation")
CHUNK_BYTES = 1 << 20


def download(url: str, dest: Path, progress: bool = True, timeout_s: float = 60) -> Path:
    """Download `url` to `dest` (via dest.part, renamed when complete); an existing complete file is kept."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"fetch {dest.name}", disable=not progress) as bar:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise DataImportError(f"{url}: download failed ({exc})") from exc
    try:
        with zipfile.ZipFile(partial) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile as exc:
        partial.unlink(missing_ok=True)
        raise DataImportError(f"{url}: the download is not a zip archive ({exc})") from exc
    if bad is not None:
        partial.unlink(missing_ok=True)
        raise DataImportError(f"{url}: member {bad!r} of the download is corrupted")
    os.replace(partial, dest)
    return dest


def fetch_omniglot(
    download_dir: Path,
    out: str,
    *,
    base_url: str = OMNIGLOT_BASE_URL,
    archives: tuple[str, ...] = OMNIGLOT_ARCHIVES,
    file_format: str = "arrow",
    overwrite: bool = False,
    progress: bool = True,
) -> Manifest:
    """Download `archives` into `download_dir` and import them together into the shard set `out`."""
    paths = [download(f"{base_url.rstrip('/')}/{name}.zip", Path(download_dir) / f"{name}.zip", progress) for name in archives]
    return import_omniglot([str(p) for p in paths], out, file_format=file_format, overwrite=overwrite, progress=progress)
