"""Every job file in jobs/ parses into a valid JobConfig (they are the documented standard experiments)."""

from __future__ import annotations

from pathlib import Path

import pytest

from metadist.config import JobConfig, load_job

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))


def test_there_are_job_files():
    assert JOBS


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_job_file_is_valid_and_named_after_its_file(path):
    job = load_job(str(path))
    assert isinstance(job, JobConfig)
    assert job.name == path.stem  # outputs/<name>/ and the MLflow run name match the file


def test_the_default_job_file_equals_the_embedded_default():
    job = load_job(str(Path(__file__).resolve().parents[1] / "jobs" / "omniglot-5way-1shot-maml.yaml"))
    assert job.model_copy(update={"name": JobConfig().name}) == JobConfig()
