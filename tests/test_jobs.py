"""Every job file in jobs/ parses into a valid JobConfig (they are the documented standard experiments)."""

from __future__ import annotations

from pathlib import Path

import pytest

from metadist.config import JobConfig, load_job

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))
# The 84-pixel benchmarks (mini-ImageNet ...): their shard sets are imported by the user, so shrunk runs train on the
# bundled Omniglot instead, with everything else (learner, backbone, episode shape, optimizer) as written.
BENCHMARK_JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs" / "benchmarks").glob("*.yaml"))


def test_there_are_job_files():
    assert JOBS and len(BENCHMARK_JOBS) == 15  # 5 benchmarks × ProtoNet, ANIL, first-order MAML on ResNet-12


@pytest.mark.parametrize("path", JOBS + BENCHMARK_JOBS, ids=[p.name for p in JOBS + BENCHMARK_JOBS])
def test_job_file_is_valid_and_named_after_its_file(path):
    job = load_job(str(path))
    assert isinstance(job, JobConfig)
    assert job.name == path.stem  # outputs/<name>/ and the MLflow run name match the file


def test_the_default_job_files_equal_the_embedded_default_and_the_configurations_defaults():
    jobs = Path(__file__).resolve().parents[1] / "jobs"
    embedded = load_job(None)
    pretrained = load_job(str(jobs / "omniglot-5way-1shot-maml-pretrained.yaml"))
    assert pretrained.model_copy(update={"name": embedded.name}) == embedded
    assert embedded.pretrain.epochs > 0 and embedded.algorithm.name == "maml"
    plain = load_job(str(jobs / "omniglot-5way-1shot-maml.yaml"))
    assert plain.model_copy(update={"name": JobConfig().name}) == JobConfig()


@pytest.mark.slow
@pytest.mark.parametrize("path", JOBS + BENCHMARK_JOBS, ids=[p.name for p in JOBS + BENCHMARK_JOBS])
def test_job_file_runs_end_to_end_when_shrunk(path, small1_uri, small2_uri, tmp_path):
    """Each standard experiment trains, checkpoints and evaluates as written: only its size is cut (steps, width,
    episodes, pre-training epochs), never its algorithm, episode shape or optimizer."""
    from metadist.cli import main

    job = load_job(str(path))
    sets = ["train.steps=2", "train.meta_batch=2", "train.eval_every=0", "train.final_eval_episodes=2",
            "train.threads=1", "model.hidden=8", "tracking.enabled=false", f"checkpoint.uri={tmp_path / 'ckpt'}"]
    if job.data.regression is None:  # the cached bundled shard sets, under the test's private cache
        sets += [f"data.train.uri={small1_uri}", f"data.test.uri={small2_uri}"]
    if job.pretrain.epochs:
        sets += ["pretrain.epochs=1"]
    args = ["train", str(path), "--no-progress"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    from metadist.core import checkpoint as ckpt_io

    assert [step for step, _ in ckpt_io.run_checkpoints(str(tmp_path / "ckpt"))][-1] == 2
