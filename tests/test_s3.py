"""Shard sets on S3 (a real moto server on loopback) and memory://: the same bytes, classes and episodes as on disk.

Every import here is written twice, once to local disk and once to the remote store, and the two are compared
byte for byte (shard files and manifest), class by class (`read_class`) and episode by episode (`EpisodeSampler`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import starts
from tests.synthetic import make_omniglot_zip
from metadist.config import EpisodeConfig, SplitConfig
from metadist.data import EpisodeSampler, ShardSet, import_omniglot
from metadist.errors import ShardError

pytestmark = pytest.mark.s3

s3fs = pytest.importorskip("s3fs")

BUCKET = "metadist-test"
FORMATS = ("arrow", "parquet")


# -- synthetic Omniglot ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_zip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("s3-input")
    return make_omniglot_zip(folder / "images_background.zip", "images_background", {"Alpha": 3, "Beta": 3})


@pytest.fixture(scope="module")
def local_sets(tmp_path_factory, synthetic_zip) -> dict[str, str]:
    """The synthetic zip imported to local disk, once per format: the reference for every remote copy."""
    root = tmp_path_factory.mktemp("s3-local-sets")
    out = {}
    for fmt in FORMATS:
        out[fmt] = str(root / fmt)
        import_omniglot([str(synthetic_zip)], out[fmt], file_format=fmt, progress=False)
    return out


# -- moto ------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_command(port: int) -> list[str]:
    exe = Path(sys.executable).with_name("moto_server")
    if exe.exists():
        return [str(exe), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@pytest.fixture(scope="module")
@starts("server")
def moto_endpoint(tmp_path_factory):
    """A moto S3 server on 127.0.0.1, fake credentials in the environment, one bucket; stopped at the end."""
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        for attempt in range(3):  # the free port may be taken between probing and binding: try another
            port = _free_port()
            endpoint = f"http://127.0.0.1:{port}"
            log = open(log_path, "ab")
            proc = subprocess.Popen(_moto_command(port), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            up = False
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                        pass
                    up = True
                except urllib.error.HTTPError:
                    up = True  # any HTTP answer means it is serving
                except OSError:
                    time.sleep(0.05)
                if up:
                    break
            if up:
                break
            proc.kill()
            proc.wait(timeout=10)
            log.close()
        else:
            pytest.fail(f"moto_server did not start; its log:\n{log_path.read_text(errors='replace')}")
        try:
            s3fs.S3FileSystem.clear_instance_cache()
            fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)
            fs.mkdir(BUCKET)
            yield endpoint
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            log.close()


@pytest.fixture
def storage_options(moto_endpoint) -> dict:
    return {"endpoint_url": moto_endpoint, "key": "testing", "secret": "testing"}


@pytest.fixture
def s3(storage_options):
    """A fresh s3fs client for checks, with no instance or listing cache shared with metadist's."""
    return s3fs.S3FileSystem(skip_instance_cache=True, **storage_options)


@pytest.fixture(autouse=True)
def _no_fsspec_instance_cache():
    """A cached S3FileSystem (and its directory listings) must not carry from one test into the next."""
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def _prefix(name: str) -> str:
    return f"{BUCKET}/{name}-{uuid.uuid4().hex[:8]}"


# -- comparisons -----------------------------------------------------------------------------------------------
def _local_files(path: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir()) if p.is_file()}


def _s3_files(s3, prefix: str) -> dict[str, bytes]:
    s3.invalidate_cache()
    return {key.rsplit("/", 1)[-1]: s3.cat_file(key) for key in sorted(s3.find(prefix))}


def assert_same_files(local: str, s3, prefix: str) -> None:
    here, there = _local_files(local), _s3_files(s3, prefix)
    assert sorted(there) == sorted(here)
    assert "manifest.json" in there and any(name.startswith("shard-") for name in there)
    for name in here:
        assert there[name] == here[name], f"{name} differs between local disk and s3://{prefix}"


def assert_same_classes(a: ShardSet, b: ShardSet) -> None:
    assert a.manifest == b.manifest
    for i in range(len(a.manifest.classes)):
        x, y = a.read_class(i), b.read_class(i)
        assert x.dtype == y.dtype == np.uint8
        assert x.shape == (a.manifest.classes[i].count, *a.manifest.example_shape)
        np.testing.assert_array_equal(x, y)


def assert_same_batches(a, b) -> None:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), f"field {f.name} differs"
        else:
            assert x == y, f"field {f.name} differs"


# -- tests -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_import_to_s3_is_byte_identical_and_reads_the_same_classes(fmt, synthetic_zip, local_sets, storage_options, s3):
    prefix = _prefix(f"synthetic-{fmt}")
    manifest = import_omniglot(
        [str(synthetic_zip)], f"s3://{prefix}", file_format=fmt, storage_options=storage_options, progress=False
    )
    assert manifest.file_format == fmt
    assert len(manifest.classes) == 6 and manifest.groups() == {"Alpha": 3, "Beta": 3}
    assert_same_files(local_sets[fmt], s3, prefix)

    remote = ShardSet(f"s3://{prefix}", storage_options=storage_options)
    assert remote.manifest == manifest
    remote.verify()
    assert_same_classes(ShardSet(local_sets[fmt]), remote)


@pytest.mark.parametrize("fmt", FORMATS)
def test_episodes_from_s3_equal_episodes_from_local_disk(fmt, synthetic_zip, local_sets, storage_options):
    prefix = _prefix(f"episodes-{fmt}")
    import_omniglot([str(synthetic_zip)], f"s3://{prefix}", file_format=fmt, storage_options=storage_options, progress=False)
    remote = ShardSet(f"s3://{prefix}", storage_options=storage_options)
    local = ShardSet(local_sets[fmt])
    for episode, split in [
        (EpisodeConfig(ways=5, shots=1, queries=5), None),
        (EpisodeConfig(ways=3, shots=2, queries=3, rotations=True), SplitConfig(groups=["Beta"])),
    ]:
        a = EpisodeSampler(local, episode, split=split, seed=7)
        b = EpisodeSampler(remote, episode, split=split, seed=7)
        for step in (0, 3):
            assert_same_batches(a.sample(step, range(6)), b.sample(step, range(6)))
        # a second remote process with a tiny cache, asking task by task: still the same episodes
        just_enough = episode.ways * 20 * 28 * 28 / 2**20  # one episode's classes, no more
        c = EpisodeSampler(ShardSet(f"s3://{prefix}", storage_options=storage_options), episode, split=split, seed=7, cache_mb=just_enough)
        assert c.cache.slots == episode.ways
        batch = a.sample(5, [2, 4])
        for i, task in enumerate([2, 4]):
            one = c.sample(5, [task])
            assert torch.equal(one.support_x[0], batch.support_x[i]) and torch.equal(one.query_x[0], batch.query_x[i])


@pytest.mark.parametrize("fmt", FORMATS)
def test_import_reads_its_zip_from_s3(fmt, synthetic_zip, local_sets, storage_options, s3):
    zip_key = f"{_prefix('inputs')}/images_background.zip"
    s3.put_file(str(synthetic_zip), zip_key)
    prefix = _prefix(f"from-s3-{fmt}")
    manifest = import_omniglot(
        [f"s3://{zip_key}"], f"s3://{prefix}", file_format=fmt, storage_options=storage_options, progress=False
    )
    assert manifest.dataset["inputs"] == ["images_background"]
    # the input's location is not part of the shard set: the same bytes as the import of the local zip
    assert_same_files(local_sets[fmt], s3, prefix)
    remote = ShardSet(f"s3://{prefix}", storage_options=storage_options)
    remote.verify()
    assert_same_classes(ShardSet(local_sets[fmt]), remote)


def test_import_from_s3_to_local_disk(synthetic_zip, local_sets, storage_options, s3, tmp_path):
    zip_key = f"{_prefix('inputs')}/images_background.zip"
    s3.put_file(str(synthetic_zip), zip_key)
    out = tmp_path / "from-s3"
    import_omniglot([f"s3://{zip_key}"], str(out), storage_options=storage_options, progress=False)
    assert _local_files(str(out)) == _local_files(local_sets["arrow"])


def test_existing_s3_shard_set_is_kept_without_overwrite_and_replaced_with_it(synthetic_zip, tmp_path, storage_options, s3):
    prefix = _prefix("overwrite")
    uri = f"s3://{prefix}"
    import_omniglot([str(synthetic_zip)], uri, storage_options=storage_options, progress=False)
    ShardSet(uri, storage_options=storage_options).read_class(0)  # warm any listing cache metadist keeps
    before = _s3_files(s3, prefix)

    with pytest.raises(ShardError, match="already holds a shard set") as err:
        import_omniglot([str(synthetic_zip)], uri, file_format="parquet", storage_options=storage_options, progress=False)
    assert prefix in str(err.value)
    assert _s3_files(s3, prefix) == before
    ShardSet(uri, storage_options=storage_options).verify()

    other = make_omniglot_zip(tmp_path / "other.zip", "images_evaluation", {"Gamma": 2}, seed=1000)
    manifest = import_omniglot([str(other)], uri, file_format="parquet", overwrite=True, storage_options=storage_options, progress=False)
    after = _s3_files(s3, prefix)
    assert sorted(after) == sorted(["manifest.json", *(s.path for s in manifest.shards)])  # the old shards are gone
    assert all(name.endswith(".parquet") for name in after if name != "manifest.json")
    shards = ShardSet(uri, storage_options=storage_options)
    assert shards.manifest == manifest and shards.manifest.groups() == {"Gamma": 2}
    shards.verify()


def test_missing_s3_shard_set_and_missing_shard_name_the_uri(synthetic_zip, storage_options, s3):
    missing = f"s3://{BUCKET}/no-such-set-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ShardError, match="does not exist") as err:
        ShardSet(missing, storage_options=storage_options)
    assert missing in str(err.value)

    prefix = _prefix("lost-shard")
    manifest = import_omniglot([str(synthetic_zip)], f"s3://{prefix}", storage_options=storage_options, progress=False)
    shard = manifest.shards[manifest.classes[0].shard].path
    s3.rm(f"{prefix}/{shard}")
    shards = ShardSet(f"s3://{prefix}", storage_options=storage_options)
    with pytest.raises(ShardError, match="missing") as err:
        shards.read_class(0)
    assert f"s3://{prefix}/{shard}" in str(err.value)


def test_corrupted_s3_shard_fails_verify(synthetic_zip, storage_options, s3):
    prefix = _prefix("corrupt")
    manifest = import_omniglot([str(synthetic_zip)], f"s3://{prefix}", storage_options=storage_options, progress=False)
    key = f"{prefix}/{manifest.shards[0].path}"
    data = bytearray(s3.cat_file(key))
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(255 - b for b in data[middle : middle + 16])
    s3.pipe_file(key, bytes(data))
    with pytest.raises(ShardError, match="SHA-256") as err:
        ShardSet(f"s3://{prefix}", storage_options=storage_options).verify()
    assert f"s3://{key}" in str(err.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_memory_round_trip(fmt, synthetic_zip, local_sets):
    import fsspec

    mem = fsspec.filesystem("memory")
    path = f"/metadist-test-{fmt}-{uuid.uuid4().hex[:8]}"
    try:
        manifest = import_omniglot([str(synthetic_zip)], f"memory://{path}", file_format=fmt, progress=False)
        assert {p.rsplit("/", 1)[-1]: mem.cat_file(p) for p in mem.find(path)} == _local_files(local_sets[fmt])
        shards = ShardSet(f"memory://{path}")
        assert shards.manifest == manifest
        shards.verify()
        local = ShardSet(local_sets[fmt])
        assert_same_classes(local, shards)
        episode = EpisodeConfig(ways=4, shots=1, queries=2)
        assert_same_batches(
            EpisodeSampler(local, episode, seed=1).sample(2, range(5)),
            EpisodeSampler(shards, episode, seed=1).sample(2, range(5)),
        )
    finally:
        if mem.exists(path):
            mem.rm(path, recursive=True)


def test_cli_reads_an_s3_shard_set_configured_from_the_environment(synthetic_zip, storage_options, monkeypatch, capsys):
    """The CLI takes no storage options: the endpoint and credentials come from the standard AWS variables."""
    from metadist.cli import main

    prefix = _prefix("cli")
    uri = f"s3://{prefix}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", storage_options["endpoint_url"])
    assert main(["data", "import", "omniglot", str(synthetic_zip), "--out", uri, "--format", "parquet"]) == 0
    assert main(["data", "info", uri]) == 0
    assert main(["data", "verify", uri]) == 0
    assert main(["data", "sample", uri, "--ways", "3", "--shots", "1", "--queries", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{uri}: 6 classes in 2 groups" in out and f"{uri}: OK (1 shards, 6 classes)" in out

    missing = f"s3://{BUCKET}/nothing-here"
    assert main(["data", "info", missing]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metadist: error: ") and missing in err and "Traceback" not in err
