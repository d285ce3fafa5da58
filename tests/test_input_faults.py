"""Input faults: settings that cannot mean anything, shard sets that point outside themselves or were changed after
import, and addresses that are wrong or unreachable. Each is refused before it can do harm, as one
`metadist: error: ...` line (exit code 2, no traceback) naming the file, field, flag or address, and nothing saved
earlier (a checkpoint folder, a shard set) is changed.
"""

from __future__ import annotations

import functools
import json
import shutil
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from metadist.cli import main
from metadist.data import ShardSet, import_omniglot
from metadist.errors import ShardError
from tests.helpers import assert_one_line_error, starts, train_tiny_cli
from tests.synthetic import make_omniglot_zip


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path → bytes): what "nothing changed" compares."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def saved(tmp_path) -> Path:
    """A folder of earlier output (a checkpoint and its metadata) that a refused command must leave as it is."""
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "step-00000004.safetensors").write_bytes(b"earlier checkpoint")
    (folder / "latest.json").write_text('{"step": 4}')
    return folder


@pytest.fixture(scope="module")
def base_set(tmp_path_factory) -> Path:
    """A good shard set: 7 classes of 20 drawings in 2 alphabets, one arrow shard."""
    root = tmp_path_factory.mktemp("input-faults")
    archive = make_omniglot_zip(root / "images_background.zip", "images_background", {"Alpha": 3, "Beta": 4})
    import_omniglot([str(archive)], str(root / "set"), progress=False)
    return root / "set"


@pytest.fixture
def shard_set(base_set, tmp_path) -> Path:
    """A private copy of the good shard set, to damage."""
    return Path(shutil.copytree(base_set, tmp_path / "set"))


def _shard(folder: Path) -> Path:
    return folder / json.loads((folder / "manifest.json").read_text())["shards"][0]["path"]


def _set_shard_path(folder: Path, path: str) -> None:
    manifest = folder / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["shards"][0]["path"] = path
    manifest.write_text(json.dumps(doc))


def _flip_middle_bytes(shard: Path) -> None:
    """Change 8 bytes in the middle of the shard (pixels), keeping its size: only the hash can tell."""
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    shard.write_bytes(bytes(data))


def _train_args(data_uri: Path | str, checkpoint: Path, *sets: str) -> list[str]:
    """`metadist train` of a tiny job on one shard set (train and test), checkpoints into `checkpoint`."""
    args = ["train", "--no-progress"]
    for s in (
        f"data.train={{uri: '{data_uri}'}}", f"data.test={{uri: '{data_uri}'}}", "data.episode.ways=3",
        "data.test_episode.ways=3", "data.episode.queries=2", "data.test_episode.queries=2", "model.hidden=8",
        "train.meta_batch=2", "train.steps=2", "train.log_every=1", "train.eval_every=0", "train.final_eval_episodes=2",
        "train.threads=1", f"checkpoint.uri={checkpoint}", "tracking.enabled=false", "pretrain.epochs=0", *sets,
    ):  # fmt: skip
        args += ["--set", s]
    return args


def _free_loopback_port() -> int:
    """A loopback port with nothing listening on it (bound by the system, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- settings: every float finite ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "setting,field",
    [
        ("optimizer.lr=inf", "optimizer.lr"),
        ("optimizer.lr=.nan", "optimizer.lr"),
        ("optimizer.lr=-.inf", "optimizer.lr"),
        ("algorithm.inner_lr=.inf", "algorithm.inner_lr"),
        ("optimizer.clip_norm=nan", "optimizer.clip_norm"),
        ("train.time_budget_s=.inf", "train.time_budget_s"),
        ("data.train.cache_mb=inf", "data.train.cache_mb"),
        ("distributed.slice_timeout_s=.inf", "distributed.slice_timeout_s"),
    ],
)
def test_non_finite_setting_is_refused_naming_the_field(setting, field, saved, capsys):
    before = _snapshot(saved)
    code, err = _cli(capsys, "train", "--set", setting, "--set", f"checkpoint.uri={saved}")
    assert_one_line_error(code, err, f"{field}: Input should be a finite number")
    assert _snapshot(saved) == before


def test_non_finite_setting_in_a_job_file_names_the_file_and_the_field(tmp_path, saved, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(f"optimizer:\n  lr: .inf\ncheckpoint:\n  uri: {saved}\n")
    before = _snapshot(saved)
    code, err = _cli(capsys, "train", str(job))
    assert_one_line_error(code, err, str(job), "optimizer.lr", "finite")
    assert _snapshot(saved) == before


# -- settings: counts that must be positive ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "setting,field",
    [
        ("data.episode.ways=1", "data.episode.ways"),
        ("data.test_episode.ways=1", "data.test_episode.ways"),
        ("data.episode.shots=0", "data.episode.shots"),
        ("algorithm.inner_steps=-1", "algorithm.inner_steps"),
        ("train.steps=0", "train.steps"),
        ("train.final_eval_episodes=0", "train.final_eval_episodes"),
        ("data.regression={shots: 0}", "data.regression.shots"),
    ],
)
def test_non_positive_count_is_refused_naming_the_field(setting, field, saved, capsys):
    before = _snapshot(saved)
    code, err = _cli(capsys, "train", "--set", setting, "--set", f"checkpoint.uri={saved}")
    assert_one_line_error(code, err, field, "greater than or equal to")
    assert _snapshot(saved) == before


def test_one_way_episodes_in_a_job_file_are_refused(tmp_path, saved, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(f"data:\n  episode:\n    ways: 1\ncheckpoint:\n  uri: {saved}\n")
    code, err = _cli(capsys, "train", str(job))
    assert_one_line_error(code, err, str(job), "data.episode.ways", "greater than or equal to 2")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small1_uri, small2_uri) -> Path:
    """A tiny MAML checkpoint folder (3-way) that eval and predict are pointed at."""
    tmp = tmp_path_factory.mktemp("input-faults-checkpoint")
    return Path(train_tiny_cli(tmp, small1_uri, small2_uri, "maml", "data.episode.ways=3", "data.test_episode.ways=3"))


@pytest.mark.parametrize(
    "command,flags,expected",
    [
        ("eval", ["--shots", "-1"], "--shots -1 (data.test_episode.shots)"),
        ("eval", ["--ways", "1"], "--ways 1 (data.test_episode.ways)"),
        ("eval", ["--queries", "0"], "--queries 0 (data.test_episode.queries)"),
        ("eval", ["--episodes", "0"], "--episodes 0 (train.final_eval_episodes)"),
        ("eval", ["--inner-steps", "-1"], "--inner-steps -1 (algorithm.eval_inner_steps)"),
        ("eval", ["--seed", "-3"], "--seed -3 (train.seed)"),
        ("predict", ["--inner-steps", "-1", "--support", ".", "--query", "."], "--inner-steps -1 (algorithm.eval_inner_steps)"),
    ],
)
def test_invalid_command_line_flag_is_refused_by_the_job_model(command, flags, expected, checkpoint, capsys):
    """The flags stand for job settings and go through the same validators as a job file (the messages are the
    job model's own)."""
    before = _snapshot(checkpoint)
    code, err = _cli(capsys, command, "--checkpoint", str(checkpoint), *flags)
    assert_one_line_error(code, err, expected, "greater than or equal to")
    assert _snapshot(checkpoint) == before


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--ways", "1"], "ways: Input should be greater than or equal to 2"),
        (["--shots", "0"], "shots: Input should be greater than or equal to 1"),
        (["--affine", "inf", "0", "0"], "affine.degrees: Input should be a finite number"),
        (["--seed", "-1"], "seed: Input should be greater than or equal to 0"),
    ],
)
def test_invalid_data_sample_flag_is_refused_by_the_settings_models(flags, expected, base_set, capsys):
    code, err = _cli(capsys, "data", "sample", str(base_set), *flags)
    assert_one_line_error(code, err, expected)


def test_negative_workers_flag_is_refused(saved, capsys):
    code, err = _cli(capsys, "train", "--workers", "-1", "--set", f"checkpoint.uri={saved}")
    assert_one_line_error(code, err, "distributed.workers")


# -- shard sets: manifest paths stay inside the set ----------------------------------------------------------------
def _escaping_set(shard_set: Path, absolute: bool) -> str:
    """Move the shard out of the set (beside it, into other/) and point the manifest at it: '../other/...' or its
    absolute path. Returns the path written into the manifest."""
    shard = _shard(shard_set)
    other = shard_set.parent / "other"
    other.mkdir()
    moved = Path(shutil.move(str(shard), other / shard.name))
    path = str(moved) if absolute else f"../other/{shard.name}"
    _set_shard_path(shard_set, path)
    return path


@pytest.mark.parametrize("absolute", [False, True], ids=["dotdot", "absolute"])
def test_manifest_path_outside_the_shard_set_is_refused_by_training_and_verify(absolute, shard_set, saved, capsys):
    path = _escaping_set(shard_set, absolute)
    manifest = str(shard_set / "manifest.json")
    outside = _snapshot(shard_set.parent / "other")
    before = _snapshot(saved)

    code, err = _cli(capsys, *_train_args(shard_set, saved))
    assert_one_line_error(code, err, manifest, repr(path), "inside the shard set")
    code, err = _cli(capsys, "data", "verify", str(shard_set))
    assert_one_line_error(code, err, manifest, repr(path), "inside the shard set")
    code, err = _cli(capsys, "data", "info", str(shard_set))
    assert_one_line_error(code, err, manifest, repr(path))
    with pytest.raises(ShardError, match="shards\\[0\\].path"):
        ShardSet(str(shard_set))

    assert _snapshot(saved) == before
    assert _snapshot(shard_set.parent / "other") == outside


@pytest.mark.parametrize("path", ["s3://bucket/shard-00000.arrow", "a\\..\\..\\x.arrow", ".", "sub/../../x.arrow"])
def test_other_shard_paths_that_leave_the_set_are_refused(path, shard_set):
    _set_shard_path(shard_set, path)
    with pytest.raises(ShardError, match="inside the shard set") as err:
        ShardSet(str(shard_set))
    assert repr(path) in str(err.value)


def test_shard_path_in_a_subfolder_that_stays_inside_is_accepted(shard_set):
    shard = _shard(shard_set)
    (shard_set / "shards").mkdir()
    shard.rename(shard_set / "shards" / shard.name)
    _set_shard_path(shard_set, f"shards/{shard.name}")
    ShardSet(str(shard_set)).verify()


# -- shard sets: checksums on first open ---------------------------------------------------------------------------
def test_changed_shard_is_refused_on_first_open_naming_the_shard(shard_set, saved, capsys):
    shard = _shard(shard_set)
    _flip_middle_bytes(shard)
    with pytest.raises(ShardError, match="SHA-256") as err:
        ShardSet(str(shard_set)).read_class(0)
    assert str(shard) in str(err.value)
    assert ShardSet(str(shard_set), verify_checksums=False).read_class(0).shape == (20, 1, 28, 28)  # size still fits

    before = _snapshot(saved)
    code, err = _cli(capsys, *_train_args(shard_set, saved))
    assert_one_line_error(code, err, str(shard), "SHA-256")
    code, err = _cli(capsys, "data", "sample", str(shard_set), "--ways", "3")
    assert_one_line_error(code, err, str(shard), "SHA-256")
    assert _snapshot(saved) == before


def test_changed_shard_trains_when_verification_is_off(shard_set, tmp_path, capsys):
    _flip_middle_bytes(_shard(shard_set))
    out = tmp_path / "ckpt"
    assert main(_train_args(shard_set, out, "data.verify_checksums=false")) == 0
    assert "checkpoint:" in capsys.readouterr().out
    assert any(out.iterdir())


def test_each_shard_is_hashed_once_per_process(base_set, monkeypatch):
    """Reopening a shard (evicted from the open set, or after close) does not hash it again: the sampler's path to a
    shard pays the hash once."""
    calls = []
    original = ShardSet._check_sha256
    monkeypatch.setattr(ShardSet, "_check_sha256", lambda self, shard: (calls.append(shard), original(self, shard)))
    shards = ShardSet(str(base_set), max_open_shards=1)
    for index in range(len(shards.manifest.classes)):
        shards.read_class(index)
    shards.close()
    shards.read_class(0)
    assert calls == [0]
    shards.verify()  # `data verify` always hashes
    assert calls == [0, 0]
    assert ShardSet(str(base_set), verify_checksums=False).read_class(0) is not None and calls == [0, 0]


# -- addresses -----------------------------------------------------------------------------------------------------
def test_unknown_protocol_is_a_one_line_error(saved, capsys):
    code, err = _cli(capsys, "data", "info", "foo://x")
    assert_one_line_error(code, err, "foo://x", "Protocol not known: foo")
    before = _snapshot(saved)
    code, err = _cli(capsys, "train", "--set", "data.train.uri=foo://x", "--set", f"checkpoint.uri={saved}")
    assert_one_line_error(code, err, "foo://x")
    assert _snapshot(saved) == before


def test_bogus_tracking_uri_is_a_one_line_error(base_set, saved, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where a local MLflow store would appear
    before = _snapshot(saved)
    code, err = _cli(capsys, *_train_args(base_set, saved, "tracking.enabled=true", "tracking.uri=bogus://x"))
    assert_one_line_error(code, err, "bogus://x", "not a tracking URI")
    assert _snapshot(saved) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_unreachable_http_uri_says_it_cannot_be_reached(saved, capsys):
    uri = f"http://127.0.0.1:{_free_loopback_port()}/omniglot"
    code, err = _cli(capsys, "data", "info", uri)
    assert_one_line_error(code, err, uri, "cannot be reached")
    assert "does not exist" not in err
    before = _snapshot(saved)
    code, err = _cli(capsys, "train", "--set", f"data.train.uri={uri}", "--set", f"checkpoint.uri={saved}")
    assert_one_line_error(code, err, uri, "cannot be reached")
    assert _snapshot(saved) == before
    code, err = _cli(capsys, "data", "import", "omniglot", f"{uri}/images_background.zip", "--out", str(saved / "new"))
    assert_one_line_error(code, err, f"{uri}/images_background.zip", "cannot be reached")
    assert _snapshot(saved) == before and not (saved / "new").exists()


def test_missing_local_shard_set_still_does_not_exist(tmp_path, capsys):
    code, err = _cli(capsys, "data", "info", str(tmp_path / "nope"))
    assert_one_line_error(code, err, str(tmp_path / "nope"), "does not exist")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
@starts("server")
def http_folder(base_set):
    """The folder holding `base_set` served over HTTP on loopback (no range requests: Python's plain file server)."""
    handler = functools.partial(_QuietHandler, directory=str(base_set.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_http_shard_set_that_is_absent_does_not_exist_and_one_that_is_there_is_read(http_folder, base_set, capsys):
    """The server answers: a missing set is "does not exist" (HTTP 404), never "cannot be reached"; a server that
    cannot serve a shard's byte ranges is an error naming the shard."""
    code, err = _cli(capsys, "data", "info", f"{http_folder}/nope")
    assert_one_line_error(code, err, f"{http_folder}/nope", "does not exist")
    assert main(["data", "info", f"{http_folder}/{base_set.name}"]) == 0
    assert "7 classes in 2 groups" in capsys.readouterr().out
    code, err = _cli(capsys, "data", "sample", f"{http_folder}/{base_set.name}", "--ways", "3")
    assert_one_line_error(code, err, f"{http_folder}/{base_set.name}/{_shard(base_set).name}", "range requests")
