"""Faults around checkpoints, as a hostile or unlucky user meets them: runs sharing a folder, two writers, SIGTERM and
SIGKILL mid-run, a full disk, an unwritable location, damaged or doctored files. Each test checks the message a person
reads and that nothing saved before changed."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metadist.cli import main
from metadist.core import checkpoint as ckpt_io
from metadist.core import runs
from metadist.errors import CheckpointError
from metadist.training import LocalTrainer
from tests.helpers import tiny_job
from tests.mlflow_server import mlflow_server  # noqa: F401  (session fixture: a real `mlflow server`)

CLI_TIMEOUT_S = 180


def _steps(root) -> list[int]:
    return [step for step, _ in ckpt_io.run_checkpoints(str(root))]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("step-*.safetensors"))}


def _one_line_error(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("metadist: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- runs own their checkpoints --------------------------------------------------------------------------------------
def test_a_second_shorter_run_keeps_its_own_checkpoints_and_the_first_runs(small1_uri, small2_uri, tmp_path, capsys):
    root = tmp_path / "ckpt"
    first = LocalTrainer(tiny_job(small1_uri, small2_uri, tmp_path, "train.steps=6", "checkpoint.every=2"), progress=False).run()
    before = _files(root)
    second = LocalTrainer(tiny_job(small1_uri, small2_uri, tmp_path, "train.steps=2", "checkpoint.every=2"), progress=False).run()
    assert Path(second.checkpoint_uri).is_file() and Path(first.checkpoint_uri).is_file()
    assert Path(second.checkpoint_uri).parent != Path(first.checkpoint_uri).parent
    assert {k: v for k, v in _files(root).items() if k in before} == before  # the first run's files untouched
    assert sorted(p.name for p in root.iterdir()) == sorted({Path(first.checkpoint_uri).parent.name, Path(second.checkpoint_uri).parent.name})
    assert not list(root.rglob(".lock")), "a finished run releases its folder"
    # Given the root, eval takes the newest run's newest checkpoint and says which.
    assert main(["eval", "--checkpoint", str(root), "--episodes", "4"]) == 0
    assert f"{second.checkpoint_uri} (step 2)" in capsys.readouterr().out


def test_two_runs_at_once_into_one_folder_both_keep_their_result(small1_uri, small2_uri, tmp_path):
    root = tmp_path / "ckpt"
    command = [sys.executable, "-m", "metadist", "train", "--no-progress"]
    for s in (f"data.train.uri={small1_uri}", f"data.test.uri={small2_uri}", "data.test.split.groups=[Tagalog]",
              "data.episode.queries=2", "data.test_episode.queries=2", "model.hidden=8", "train.meta_batch=2",
              "train.steps=4", "train.eval_every=0", "train.final_eval_episodes=4", "train.threads=1",
              "checkpoint.every=1", f"checkpoint.uri={root}", "tracking.enabled=false", "pretrain.epochs=0"):  # fmt: skip
        command += ["--set", s]
    both = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=CLI_TIMEOUT_S) for p in both]
    assert [p.returncode for p in both] == [0, 0], [err[-2000:] for _, err in outputs]
    printed = [next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("checkpoint: ")) for out, _ in outputs]
    assert len(set(printed)) == 2 and all(Path(uri).is_file() for uri in printed)
    for uri in printed:
        assert [s for s, _ in ckpt_io.list_checkpoints(str(Path(uri).parent))] == [2, 3, 4]  # keep=3, each its own


def test_a_second_writer_is_refused_with_the_holder_named(small1_uri, small2_uri, tmp_path):
    job = tiny_job(small1_uri, small2_uri, tmp_path, "train.steps=4", "checkpoint.every=2")
    result = LocalTrainer(job, progress=False).run()
    folder = Path(result.checkpoint_uri).parent
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = {"host": socket.gethostname(), "pid": holder.pid, "pid_start": runs._process_start(holder.pid),
                "started": "2026-11-30T05:00:00Z", "refreshed_s": time.time()}
        (folder / runs.LOCK_NAME).write_text(json.dumps(lock))
        before = _files(folder)
        resumed = LocalTrainer(job.model_copy(update={"train": job.train.model_copy(update={"steps": 6})}), resume=True, progress=False)
        with pytest.raises(CheckpointError, match=rf"another run is writing here \(pid {holder.pid} on {socket.gethostname()}"):
            resumed.run()
        assert _files(folder) == before
    finally:
        holder.kill()
        holder.wait()
    # Its process gone, the lock is stale: the next resume takes it over.
    LocalTrainer(job.model_copy(update={"train": job.train.model_copy(update={"steps": 6})}), resume=True, progress=False).run()
    assert _steps(folder) == [2, 4, 6]


def test_a_lock_not_refreshed_for_long_is_taken_over(tmp_path, caplog):
    folder = runs.RunFolder(str(tmp_path / "run-x"))
    (tmp_path / "run-x").mkdir()
    lock = {"host": "another-node", "pid": 1, "started": "2026-11-30T05:00:00Z", "refreshed_s": time.time() - runs.LOCK_STALE_S - 1}
    (tmp_path / "run-x" / runs.LOCK_NAME).write_text(json.dumps(lock))
    folder.acquire()
    try:
        assert json.loads((tmp_path / "run-x" / runs.LOCK_NAME).read_text())["pid"] == os.getpid()
        assert "taking over the lock of pid 1 on another-node" in caplog.text
    finally:
        folder.release()
    lock["refreshed_s"] = time.time()
    (tmp_path / "run-x" / runs.LOCK_NAME).write_text(json.dumps(lock))
    with pytest.raises(CheckpointError, match="another run is writing here .pid 1 on another-node"):
        runs.RunFolder(str(tmp_path / "run-x")).acquire()


# -- resume: extend, fall back, fork -----------------------------------------------------------------------------------
def test_a_run_can_be_extended_and_a_damaged_newest_checkpoint_falls_back(small1_uri, small2_uri, tmp_path, caplog):
    job = tiny_job(small1_uri, small2_uri, tmp_path, "train.steps=4", "checkpoint.every=2")
    result = LocalTrainer(job, progress=False).run()
    newest = Path(result.checkpoint_uri)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a save cut short
    (newest.parent / ".partial-0123.safetensors").write_bytes(b"left by a full disk")
    longer = job.model_copy(update={"train": job.train.model_copy(update={"steps": 6})})
    resumed = LocalTrainer(longer, resume=True, progress=False)
    assert resumed.step == 2 and "skipping" in caplog.text and newest.name in caplog.text
    final = resumed.run()
    assert Path(final.checkpoint_uri).parent == newest.parent and final.steps == 6
    assert not list(newest.parent.glob(".partial-*"))
    with pytest.raises(CheckpointError, match="train.steps=3 is below the checkpoint's step 6"):
        LocalTrainer(job.model_copy(update={"train": job.train.model_copy(update={"steps": 3})}), resume=True, progress=False)


def test_resuming_an_older_checkpoint_forks_into_a_new_folder(small1_uri, small2_uri, tmp_path):
    job = tiny_job(small1_uri, small2_uri, tmp_path, "train.steps=4", "checkpoint.every=2")
    result = LocalTrainer(job, progress=False).run()
    original = Path(result.checkpoint_uri).parent
    before = _files(original)
    forked = LocalTrainer(job, resume=str(original / "step-00000002.safetensors"), progress=False).run()
    assert Path(forked.checkpoint_uri).parent != original and _files(original) == before


# -- SIGTERM and SIGKILL -------------------------------------------------------------------------------------------------
def _long_run(small1_uri, small2_uri, root, tracking_uri, *sets):
    command = [sys.executable, "-m", "metadist", "train", "--no-progress"]
    for s in (f"name=preempted", f"data.train.uri={small1_uri}", f"data.test.uri={small2_uri}",
              "data.test.split.groups=[Tagalog]", "data.episode.queries=2", "data.test_episode.queries=2", "model.hidden=8",
              "train.meta_batch=2", "train.steps=100000", "train.log_every=1", "train.eval_every=0",
              "train.final_eval_episodes=4", "train.threads=1", "checkpoint.every=5", f"checkpoint.uri={root}", "pretrain.epochs=0",
              "tracking.enabled=true", f"tracking.uri={tracking_uri}", "tracking.experiment=faults",
              "tracking.log_model=false", "tracking.log_checkpoints=false", *sets):  # fmt: skip
        command += ["--set", s]
    return command


def _wait_for_checkpoint(process, root: Path, step: int) -> None:
    deadline = time.monotonic() + CLI_TIMEOUT_S
    while max(_steps(root), default=0) < step:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)


def test_sigterm_saves_marks_the_run_killed_and_exits_143(small1_uri, small2_uri, tmp_path, mlflow_server):  # noqa: F811
    from mlflow import MlflowClient

    root = tmp_path / "ckpt"
    process = subprocess.Popen(_long_run(small1_uri, small2_uri, root, mlflow_server), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(process, root, 5)
    time.sleep(0.5)  # a few steps past the checkpoint
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=CLI_TIMEOUT_S)
    assert process.returncode == 143, err[-3000:]
    assert "Terminated at step" in err and "metadist: stopped by SIGTERM" in err and "Traceback" not in err
    saved = ckpt_io.load(str(root))
    run_id = saved.loop.mlflow_run_id
    client = MlflowClient(mlflow_server)
    assert client.get_run(run_id).info.status == "KILLED"
    logged = max(m.step for m in client.get_metric_history(run_id, "train/loss_after"))
    assert saved.step > 5 and logged <= saved.step <= logged + 1, "the checkpoint is of the step SIGTERM stopped at"
    assert not list(root.rglob(".lock"))


def test_after_sigkill_resume_logs_no_metric_point_twice(small1_uri, small2_uri, tmp_path, mlflow_server):  # noqa: F811
    from mlflow import MlflowClient

    root = tmp_path / "ckpt"
    command = _long_run(small1_uri, small2_uri, root, mlflow_server, "checkpoint.every=20")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(process, root, 20)
    client = MlflowClient(mlflow_server)
    run_id = ckpt_io.load(str(root)).loop.mlflow_run_id
    deadline = time.monotonic() + CLI_TIMEOUT_S
    while True:  # kill a few steps past the step-20 checkpoint, long before the next one
        steps = [m.step for m in client.get_metric_history(run_id, "train/loss_after")]
        if max(steps) >= 23:
            break
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.kill()
    process.wait()
    saved = ckpt_io.load(str(root))
    logged = max(m.step for m in client.get_metric_history(run_id, "train/loss_after"))
    assert logged > saved.step, "the kill came too early to test anything"
    # The lock of the killed process is stale (its pid is gone): resume takes it over.
    done = subprocess.run(command + ["--set", f"train.steps={logged + 3}", "--resume"], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [m.step for m in client.get_metric_history(saved.loop.mlflow_run_id, "train/loss_after")]
    assert len(steps) == len(set(steps)) and max(steps) == logged + 3


# -- writing fails ------------------------------------------------------------------------------------------------------
def test_an_unwritable_location_fails_before_the_first_step(small1_uri, small2_uri, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    started = time.monotonic()
    code = main(["train", "--no-progress", "--set", f"data.train.uri={small1_uri}", "--set", f"data.test.uri={small2_uri}",
                 "--set", "model.hidden=8",
                 "--set", "train.steps=100000", "--set", f"checkpoint.uri={blocker / 'ckpt'}", "--set", "tracking.enabled=false"])
    assert code == 2 and time.monotonic() - started < 60
    _one_line_error(capsys.readouterr().err, str(blocker / "ckpt"), "cannot write checkpoints here")
    assert blocker.read_text() == "not a folder"


def test_a_full_disk_leaves_no_partial_file_and_earlier_checkpoints_intact(small1_uri, small2_uri, tmp_path, monkeypatch):
    job = tiny_job(small1_uri, small2_uri, tmp_path, "train.steps=6", "checkpoint.every=2")
    real_open = ckpt_io.filesystem

    class FullDisk:
        """A file that takes 100 bytes, then raises ENOSPC: what a full disk does to a write."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    fs, _ = ckpt_io.filesystem(str(tmp_path))  # fsspec keeps one local filesystem: the one checkpoints are saved with
    original, saves = fs.open, {"n": 0}

    def open_filling_up(path, mode="rb", **kwargs):
        f = original(path, mode, **kwargs)
        if "w" in mode and ckpt_io.PARTIAL_PREFIX in str(path):
            saves["n"] += 1
            if saves["n"] == 2:  # the second save meets a full disk
                return FullDisk(f)
        return f

    monkeypatch.setattr(fs, "open", open_filling_up)
    trainer = LocalTrainer(job, progress=False)
    with pytest.raises(CheckpointError, match=r"step-00000004\.safetensors: cannot write the checkpoint \(no space left on the device\); earlier checkpoints are untouched"):
        trainer.run()
    monkeypatch.undo()
    folder = Path(trainer.run_folder.uri)
    assert not list(folder.glob(".partial-*")) and _steps(folder) == [2]
    assert LocalTrainer(job, resume=True, progress=False).run().steps == 6


# -- what a loaded file is checked for -----------------------------------------------------------------------------------
@pytest.fixture
def saved(small1_uri, small2_uri, tmp_path):
    job = tiny_job(small1_uri, small2_uri, tmp_path, "train.steps=2", "checkpoint.every=0")
    return ckpt_io.read(LocalTrainer(job, progress=False).run().checkpoint_uri)


def test_flipped_bytes_are_caught_by_the_digest(saved, tmp_path, capsys):
    path = Path(saved.uri)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01  # a bit in the last tensor's data
    damaged = tmp_path / "flipped.safetensors"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its sha256 digest"):
        ckpt_io.load(str(damaged))
    assert main(["eval", "--checkpoint", str(damaged)]) == 2
    _one_line_error(capsys.readouterr().err, str(damaged), "sha256")


@pytest.mark.parametrize("doctor, message", [
    (lambda c: c.meta_params.update({n: torch.full_like(v, float("nan")) for n, v in c.meta_params.items()}), "holds NaN or infinite values"),
    (lambda c: setattr(c, "step", -3), "step -3 is negative"),
    (lambda c: c.meta_params.update({"head.weight": torch.zeros(3, 7)}), r"tensor 'params.head.weight' is F32 \[3, 7\], the model expects float32"),
    (lambda c: c.meta_params.update({k: v.double() for k, v in c.meta_params.items() if k == "head.bias"}), r"'params.head.bias' is F64 \[5\], the model expects float32 \[5\]"),
    (lambda c: c.meta_params.pop("head.bias"), r"missing \['head.bias'\]"),
])  # fmt: skip
def test_doctored_checkpoints_are_refused_naming_what_is_wrong(saved, tmp_path, capsys, doctor, message):
    doctor(saved)
    path = tmp_path / "doctored.safetensors"
    path.write_bytes(ckpt_io.to_bytes(saved))  # a valid digest: only the content checks can catch these
    with pytest.raises(CheckpointError, match=message):
        ckpt_io.load(str(path))
    assert main(["predict", "--checkpoint", str(path), "--support", str(tmp_path), "--query", str(path)]) == 2
    _one_line_error(capsys.readouterr().err, str(path))


def test_a_checkpoint_asking_for_a_huge_model_allocates_nothing(saved, tmp_path):
    import resource

    huge = saved.job.model_copy(update={"model": saved.job.model.model_copy(update={"hidden": 200_000})})
    saved.job = huge  # conv-4 with 200,000 filters: about 4.3 TB of parameters
    path = tmp_path / "huge.safetensors"
    path.write_bytes(ckpt_io.to_bytes(saved))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match=r"the model expects float32 \[200000"):
        ckpt_io.load(str(path))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200_000  # KiB: nothing near its size
