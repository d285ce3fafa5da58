"""`metadist data fetch omniglot`: download from a mirror (a real HTTP server on 127.0.0.1, or file://) and import.

The mirror serves small synthetic images_background.zip / images_evaluation.zip in the Omniglot layout and counts
the requests it answers, so the tests can tell a download from a reuse of an earlier one.
"""

from __future__ import annotations

import threading
import zipfile
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import starts
from tests.synthetic import make_omniglot_zip
from metadist.cli import main
from metadist.data import ShardSet, import_omniglot
from metadist.data.fetch import download, fetch_omniglot
from metadist.errors import DataImportError, ShardError

pytestmark = pytest.mark.timeout(120)

BACKGROUND = {"Alpha": 2, "Beta": 1}
EVALUATION = {"Gamma": 2}
ALL_GROUPS = {"Alpha": 2, "Beta": 1, "Gamma": 2}


# -- synthetic archives ----------------------------------------------------------------------------------------
def _write_archives(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    make_omniglot_zip(folder / "images_background.zip", "images_background", BACKGROUND, drawings=5)
    make_omniglot_zip(folder / "images_evaluation.zip", "images_evaluation", EVALUATION, drawings=5, seed=1000)
    return folder


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- the mirror ------------------------------------------------------------------------------------------------
class _Handler(SimpleHTTPRequestHandler):
    """Serves server.root; records every request; /truncated/... promises more bytes than it sends."""

    def __init__(self, request, client_address, server):
        super().__init__(request, client_address, server, directory=str(server.root))

    def do_GET(self):
        with self.server.lock:
            self.server.requests.append(self.path)
        if self.path.startswith("/truncated/"):
            data = (self.server.root / self.path.rsplit("/", 1)[-1]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format, *args):  # keep the test output clean
        pass


@dataclass
class Mirror:
    url: str
    root: Path
    requests: list = field(default_factory=list)


@pytest.fixture
@starts("server")
def mirror(tmp_path):
    root = _write_archives(tmp_path / "mirror")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.root = root
    server.requests = []
    server.lock = threading.Lock()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Mirror(url=f"http://127.0.0.1:{server.server_address[1]}", root=root, requests=server.requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """urllib honours proxy variables; a request to the loopback mirror must never go through one."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def reference(mirror, tmp_path) -> Path:
    """What fetching must produce: the mirror's two archives imported directly, in order."""
    out = tmp_path / "reference"
    import_omniglot(
        [str(mirror.root / "images_background.zip"), str(mirror.root / "images_evaluation.zip")], str(out), progress=False
    )
    return out


# -- fetch over HTTP -------------------------------------------------------------------------------------------
def test_fetch_downloads_both_archives_and_imports_them_into_one_shard_set(mirror, reference, tmp_path):
    downloads, out = tmp_path / "downloads", tmp_path / "omniglot"
    manifest = fetch_omniglot(downloads, str(out), base_url=mirror.url, progress=False)

    assert sorted(mirror.requests) == ["/images_background.zip", "/images_evaluation.zip"]
    assert _listing(downloads) == ["images_background.zip", "images_evaluation.zip"]  # no .part left
    for name in _listing(downloads):
        assert (downloads / name).read_bytes() == (mirror.root / name).read_bytes()

    assert manifest.groups() == ALL_GROUPS
    assert [c.name for c in manifest.classes] == [
        "Alpha/character01", "Alpha/character02", "Beta/character01", "Gamma/character01", "Gamma/character02",
    ]
    assert manifest.dataset["inputs"] == ["images_background", "images_evaluation"]
    shards = ShardSet(str(out))
    assert shards.manifest == manifest
    shards.verify()
    assert _snapshot(out) == _snapshot(reference)


def test_second_fetch_reuses_the_downloaded_archives(mirror, reference, tmp_path):
    downloads = tmp_path / "downloads"
    fetch_omniglot(downloads, str(tmp_path / "first"), base_url=mirror.url, progress=False)
    assert len(mirror.requests) == 2
    before = _snapshot(downloads)

    manifest = fetch_omniglot(downloads, str(tmp_path / "second"), base_url=mirror.url, progress=False)
    assert len(mirror.requests) == 2, f"the second fetch downloaded again: {mirror.requests}"
    assert _snapshot(downloads) == before
    assert manifest.groups() == ALL_GROUPS
    assert _snapshot(tmp_path / "second") == _snapshot(reference)

    # the same destination again: refused without overwrite (and kept), replaced with it; still no download
    with pytest.raises(ShardError, match="overwrite"):
        fetch_omniglot(downloads, str(tmp_path / "second"), base_url=mirror.url, progress=False)
    assert _snapshot(tmp_path / "second") == _snapshot(reference)
    fetch_omniglot(downloads, str(tmp_path / "second"), base_url=mirror.url, overwrite=True, progress=False)
    assert len(mirror.requests) == 2
    ShardSet(str(tmp_path / "second")).verify()


def test_fetch_from_a_file_url(mirror, reference, tmp_path):
    downloads, out = tmp_path / "downloads", tmp_path / "omniglot"
    manifest = fetch_omniglot(downloads, str(out), base_url=mirror.root.as_uri() + "/", progress=False)
    assert mirror.requests == []
    assert _listing(downloads) == ["images_background.zip", "images_evaluation.zip"]
    assert manifest.groups() == ALL_GROUPS
    assert _snapshot(out) == _snapshot(reference)


def test_fetch_of_chosen_archives_only(mirror, tmp_path):
    manifest = fetch_omniglot(
        tmp_path / "downloads", str(tmp_path / "out"), base_url=mirror.url, archives=("images_evaluation",), progress=False
    )
    assert mirror.requests == ["/images_evaluation.zip"]
    assert manifest.groups() == EVALUATION


# -- failures --------------------------------------------------------------------------------------------------
def test_404_names_the_url_and_leaves_no_partial_file(mirror, tmp_path):
    (mirror.root / "images_evaluation.zip").unlink()
    downloads, out = tmp_path / "downloads", tmp_path / "omniglot"
    with pytest.raises(DataImportError, match="404") as err:
        fetch_omniglot(downloads, str(out), base_url=mirror.url, progress=False)
    assert f"{mirror.url}/images_evaluation.zip" in str(err.value)
    # the archive that did arrive is complete and kept; the missing one left nothing; nothing was imported
    assert _listing(downloads) == ["images_background.zip"]
    assert (downloads / "images_background.zip").read_bytes() == (mirror.root / "images_background.zip").read_bytes()
    assert not (out / "manifest.json").exists()

    # once the mirror has it, a retry downloads only what is missing
    make_omniglot_zip(mirror.root / "images_evaluation.zip", "images_evaluation", EVALUATION, drawings=5, seed=1000)
    manifest = fetch_omniglot(downloads, str(out), base_url=mirror.url, progress=False)
    assert mirror.requests.count("/images_background.zip") == 1 and mirror.requests.count("/images_evaluation.zip") == 2
    assert manifest.groups() == ALL_GROUPS


def test_404_of_the_only_archive_leaves_the_download_dir_empty(mirror, tmp_path):
    downloads = tmp_path / "downloads"
    url = f"{mirror.url}/missing.zip"
    with pytest.raises(DataImportError) as err:
        download(url, downloads / "missing.zip", progress=False)
    assert url in str(err.value) and "404" in str(err.value)
    assert _listing(downloads) == []


def test_served_file_that_is_not_a_zip_is_refused_and_removed(mirror, tmp_path):
    (mirror.root / "images_background.zip").write_text("<html><body>Rate limit exceeded</body></html>")
    downloads = tmp_path / "downloads"
    with pytest.raises(DataImportError, match="not a zip") as err:
        fetch_omniglot(downloads, str(tmp_path / "out"), base_url=mirror.url, progress=False)
    assert f"{mirror.url}/images_background.zip" in str(err.value)
    assert _listing(downloads) == []
    assert not (tmp_path / "out").exists()


def test_truncated_transfer_is_refused_and_removed(mirror, tmp_path):
    downloads = tmp_path / "downloads"
    url = f"{mirror.url}/truncated/images_background.zip"
    with pytest.raises(DataImportError) as err:
        download(url, downloads / "images_background.zip", progress=False)
    assert url in str(err.value)
    assert _listing(downloads) == []


def test_zip_with_a_corrupted_member_names_the_member(mirror, tmp_path):
    archive = mirror.root / "images_background.zip"
    member = "images_background/Beta/character01/0001_03.png"
    with zipfile.ZipFile(archive) as z:
        payload = z.read(member)
    data = bytearray(archive.read_bytes())
    at = data.find(payload) + len(payload) // 2
    data[at] ^= 0xFF  # stored, not compressed: the central directory is intact, the CRC is not
    archive.write_bytes(bytes(data))
    downloads = tmp_path / "downloads"
    with pytest.raises(DataImportError, match="corrupted") as err:
        download(f"{mirror.url}/images_background.zip", downloads / "images_background.zip", progress=False)
    assert member in str(err.value) and f"{mirror.url}/images_background.zip" in str(err.value)
    assert _listing(downloads) == []


def test_download_keeps_an_existing_file_without_asking(mirror, tmp_path):
    dest = tmp_path / "a" / "b" / "images_background.zip"
    got = download(f"{mirror.url}/images_background.zip", dest, progress=False)  # makes the parent folders
    assert got == dest and dest.read_bytes() == (mirror.root / "images_background.zip").read_bytes()
    assert mirror.requests == ["/images_background.zip"]
    # an existing file is kept: no request, even to a URL that would fail
    assert download("http://127.0.0.1:9/unreachable.zip", dest, progress=False) == dest
    assert mirror.requests == ["/images_background.zip"]


def test_unreachable_server_names_the_url(tmp_path):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{port}/images_background.zip"
        with pytest.raises(DataImportError, match="download failed") as err:
            download(url, tmp_path / "downloads" / "images_background.zip", progress=False, timeout_s=5)
    assert url in str(err.value)
    assert _listing(tmp_path / "downloads") == []


# -- the CLI ---------------------------------------------------------------------------------------------------
def test_cli_fetch(mirror, reference, tmp_path, capsys):
    downloads, out = tmp_path / "downloads", tmp_path / "omniglot"
    code = main(["data", "fetch", "omniglot", "--base-url", mirror.url, "--download-dir", str(downloads), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{out}: 5 classes in 3 groups, 25 examples" in captured.out
    assert sorted(mirror.requests) == ["/images_background.zip", "/images_evaluation.zip"]
    assert _snapshot(out) == _snapshot(reference)

    code = main(["data", "fetch", "omniglot", "--base-url", mirror.url, "--download-dir", str(downloads), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "overwrite" in err.splitlines()[-1] and "Traceback" not in err
    code = main(["data", "fetch", "omniglot", "--base-url", mirror.url, "--download-dir", str(downloads), "--out", str(out), "--overwrite"])
    assert code == 0
    assert len(mirror.requests) == 2


def test_cli_fetch_writes_the_format_asked_for(mirror, tmp_path, capsys):
    out = tmp_path / "omniglot"
    code = main([
        "data", "fetch", "omniglot", "--base-url", mirror.url, "--download-dir", str(tmp_path / "downloads"),
        "--out", str(out), "--format", "parquet",
    ])
    assert code == 0, capsys.readouterr().err
    shards = ShardSet(str(out))
    assert shards.manifest.file_format == "parquet"
    assert _listing(out) == sorted(["manifest.json", *(s.path for s in shards.manifest.shards)])
    assert all(s.path.endswith(".parquet") for s in shards.manifest.shards)


def test_cli_fetch_defaults_to_the_cache(mirror, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METADIST_CACHE", str(tmp_path / "cache"))
    assert main(["data", "fetch", "omniglot", "--base-url", mirror.url]) == 0
    assert _listing(tmp_path / "cache" / "downloads" / "omniglot") == ["images_background.zip", "images_evaluation.zip"]
    assert ShardSet(str(tmp_path / "cache" / "shards" / "omniglot-full")).manifest.groups() == ALL_GROUPS


def test_cli_fetch_404_is_one_line_naming_the_url(mirror, tmp_path, capsys):
    (mirror.root / "images_background.zip").unlink()
    code = main(["data", "fetch", "omniglot", "--base-url", mirror.url, "--download-dir", str(tmp_path / "d"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith("metadist: error: ") and f"{mirror.url}/images_background.zip" in line and "404" in line
    assert _listing(tmp_path / "d") == []
