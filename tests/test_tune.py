"""`metadist tune`: the search-space file, a 4-trial search on the tiny job recorded in a real `mlflow server`
(parent run, a child run per trial, the written best job, the registered model), a trial that raises, and a search
resumed after its driver was SIGKILLed. Ray runs on loopback with token authentication, as in test_distributed.py.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import assert_one_line_error, tiny_job
from tests.mlflow_server import mlflow_server  # noqa: F401  (session fixture: a real `mlflow server`)

pytest.importorskip("ray.tune")

SPACE = {"algorithm.inner_lr": {"loguniform": [0.1, 0.5]}, "optimizer.lr": {"loguniform": [1.0e-4, 1.0e-2]}}
# Evaluations at steps 2 and 4, the final one after step 6: ASHA's rungs are at 2 (grace) and 6 (the end).
TUNE_SETS = ("name=tiny", "train.eval_every=2", "train.eval_episodes=4")
RESUME_TIMEOUT_S = 240
RESUME_EVAL_EPISODES = 96


def _files(tmp_path: Path, job, space: dict) -> tuple[str, str]:
    job_file, space_file = tmp_path / "job.yaml", tmp_path / "space.yaml"
    job_file.write_text(yaml.safe_dump(job.model_dump(mode="json")))
    space_file.write_text(yaml.safe_dump(space))
    return str(job_file), str(space_file)


@pytest.fixture
def ray_env(monkeypatch):
    """Token authentication on, the token in the environment (nothing written to ~/.ray); a local Ray on loopback."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for key in ("RAY_CHDIR_TO_TRIAL_DIR", "TUNE_GLOBAL_CHECKPOINT_S"):  # set by the driver, for its own Tune
        monkeypatch.delenv(key, raising=False)


# -- without a cluster -----------------------------------------------------------------------------------------------
def test_space_files_are_checked_against_the_job_with_one_line_errors(tmp_path, capsys):
    from metadist.cli import main
    from metadist.config import JobConfig, load_job
    from metadist.errors import ConfigError
    from metadist.tune import load_space, parse_space

    job = JobConfig()
    space = parse_space({**SPACE, "algorithm.inner_steps": {"choice": [1, 2]}, "data.test.split.groups":
                         {"grid": [["Tagalog"], ["Sanskrit"]]}, "model.hidden": {"randint": [8, 16]}}, job, "s.yaml")
    overrides = space.overrides({"algorithm.inner_lr": 0.2, "optimizer.lr": 1e-3, "algorithm.inner_steps": 2,
                                 "data.test.split.groups": '["Tagalog"]', "model.hidden": 9})
    assert overrides[-2:] == ['data.test.split.groups=["Tagalog"]', "model.hidden=9"] and space.has_grid
    for raw, expected in [
        ({"train.stepz": {"choice": [1]}}, "s.yaml: train.stepz = 1 does not make a valid job: train.stepz: Extra inputs"),
        ({"optimizer.lr": {"loguniform": [0, 1]}}, "s.yaml: optimizer.lr: loguniform needs low > 0"),
        ({"optimizer.lr": {"normal": [0, 1]}}, "s.yaml: optimizer.lr: unknown distribution 'normal'"),
        ({"algorithm.inner_steps": {"randint": [0, 3]}}, "s.yaml: algorithm.inner_steps = 0 does not make a valid job"),
        ({"optimizer.lr": 0.1}, "s.yaml: optimizer.lr: expected one distribution"),
    ]:
        with pytest.raises(ConfigError, match="^" + expected.replace(".", r"\.").replace("(", r"\(")):
            parse_space(raw, job, "s.yaml")
    repo = Path(__file__).resolve().parents[1]
    example = load_space(str(repo / "jobs/tune/omniglot-5way-1shot-maml-space.yaml"),
                         load_job(str(repo / "jobs/omniglot-5way-1shot-maml.yaml")))
    assert list(example.params) == ["algorithm.inner_lr", "algorithm.inner_steps", "optimizer.lr"]
    job_file, space_file = _files(tmp_path, job, {"optimizer.lr": {"uniform": [1, 1]}})
    assert_one_line_error(main(["tune", job_file, "--space", space_file]), capsys.readouterr().err,
                          f"{space_file}: optimizer.lr: uniform needs low < high")


def test_submit_with_a_space_runs_metadist_tune_on_the_cluster(tmp_path, monkeypatch):
    from metadist.config import JobConfig
    from metadist.submission import prepare_submission

    monkeypatch.chdir(tmp_path)
    job_file, space_file = _files(tmp_path, JobConfig(), SPACE)
    submission = prepare_submission(JobConfig(), job_file, overrides=["train.steps=50"], workers=2, space=space_file,
                                    tune_args=["--trials", "16"])
    assert submission.entrypoint == ("metadist tune job.yaml --space space.yaml --no-progress --trials 16 "
                                     "--set train.steps=50 --workers 2")


# -- searches on a local Ray -----------------------------------------------------------------------------------------
@pytest.mark.cluster
def test_a_four_trial_search_nests_its_trials_registers_the_best_model_and_writes_its_job(
        ray_env, small1_uri, small2_uri, tmp_path, mlflow_server, capsys):  # noqa: F811
    from mlflow import MlflowClient

    from metadist.cli import main
    from metadist.config import load_job

    job = tiny_job(small1_uri, small2_uri, tmp_path, *TUNE_SETS, "tracking.enabled=true", f"tracking.uri={mlflow_server}",
                   "tracking.experiment=tune-test", "tracking.log_checkpoints=false")
    job_file, space_file = _files(tmp_path, job, SPACE)
    storage = tmp_path / "search"
    assert main(["tune", job_file, "--space", space_file, "--trials", "4", "--storage", str(storage),
                 "--model-name", "tiny-tuned", "--json", "--no-progress"]) == 0
    outcome = _json_at_end(capsys.readouterr().out)
    assert len(outcome["trials"]) == 4 and outcome["searcher"] in ("optuna", "random")
    finished = [t for t in outcome["trials"] if t["status"] == "finished"]
    assert finished and all(t["status"] in ("finished", "stopped") and t["run_id"] for t in outcome["trials"])
    best = outcome["best"]
    assert best["value"] == max(t["value"] for t in finished)

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tune-test")
    parent = client.get_run(client.get_run(best["run_id"]).data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.tags["metadist.tune.best_run_id"] == best["run_id"]
    assert parent.data.metrics["best_held_out_accuracy"] == pytest.approx(best["value"])
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(t["run_id"] for t in outcome["trials"])
    for run, trial in ((r, next(t for t in outcome["trials"] if t["run_id"] == r.info.run_id)) for r in children):
        assert run.info.status == ("FINISHED" if trial["status"] == "finished" else "KILLED")
        assert float(run.data.params["algorithm.inner_lr"]) == pytest.approx(trial["settings"]["algorithm.inner_lr"])
    version = client.get_model_version("tiny-tuned", outcome["registered_model"].split("/")[1])
    assert version.run_id == best["run_id"]

    written = load_job(outcome["best_job_file"])
    assert written.algorithm.inner_lr == pytest.approx(best["settings"]["algorithm.inner_lr"])
    assert written.optimizer.lr == pytest.approx(best["settings"]["optimizer.lr"])
    assert written.tracking.parent_run_id is None and written.checkpoint.uri == job.checkpoint.uri
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best-job.yaml", "search.json", "job.yaml", "space.yaml"} <= artifacts


@pytest.mark.cluster
def test_a_trial_that_raises_is_reported_and_the_search_goes_on(ray_env, small1_uri, small2_uri, tmp_path, capsys):
    from metadist.cli import main

    job = tiny_job(small1_uri, small2_uri, tmp_path, *TUNE_SETS)
    # Valid settings, but no such alphabet in the test shards: that trial's trainer raises when it starts.
    job_file, space_file = _files(tmp_path, job, {"data.test.split.groups": {"grid": [["Tagalog"], ["Atlantean"]]}})
    assert main(["tune", job_file, "--space", space_file, "--trials", "1", "--storage", str(tmp_path / "s"),
                 "--no-progress", "--json"]) == 0
    trials = {t["status"]: t for t in _json_at_end(capsys.readouterr().out)["trials"]}
    assert sorted(trials) == ["error", "finished"]
    assert trials["error"]["settings"] == {"data.test.split.groups": ["Atlantean"]}
    assert "split.groups names unknown group(s) ['Atlantean']" in trials["error"]["error"]
    best = yaml.safe_load((tmp_path / "s" / "best-job.yaml").read_text())
    assert best["data"]["test"]["split"]["groups"] == ["Tagalog"]


@pytest.mark.cluster
def test_distributed_trials_reserve_their_workers_together_and_run_one_after_another_on_a_small_cluster(
        ray_env, small1_uri, small2_uri, tmp_path, capsys):
    """Each trial is a distributed job (a task worker and a parameter server of its own): its placement group holds
    the trainer's CPU and the worker's together, so on a local Ray of 2 CPUs the two trials take turns, each to its
    end, instead of each holding a CPU and waiting forever for its worker's."""
    from metadist.cli import main

    # No evaluation before the end: ASHA has nothing to stop a trial on, so both run their 6 steps.
    job = tiny_job(small1_uri, small2_uri, tmp_path, *TUNE_SETS, "train.eval_every=0", "distributed.workers=1")
    job_file, space_file = _files(tmp_path, job, {"algorithm.inner_lr": {"grid": [0.2, 0.4]}})
    assert main(["tune", job_file, "--space", space_file, "--trials", "1", "--storage", str(tmp_path / "s"),
                 "--no-progress", "--json"]) == 0
    trials = _json_at_end(capsys.readouterr().out)["trials"]
    assert sorted(t["settings"]["algorithm.inner_lr"] for t in trials) == [0.2, 0.4]
    assert [t["status"] for t in trials] == ["finished", "finished"] and all(t["step"] == 6 for t in trials)
    for trial in trials:  # each trial trained through its own parameter server: its metadist checkpoints
        assert list((tmp_path / "s" / "trials" / trial["trial_id"] / "checkpoints").glob("run-*/step-00000006.*"))


@pytest.mark.cluster
def test_a_search_resumes_after_its_driver_is_killed_without_rerunning_finished_trials(
        ray_env, small1_uri, small2_uri, tmp_path):
    # Trials take over warm processes, so each is about as long as its training: evaluations of RESUME_EVAL_EPISODES
    # keep every trial (even one ASHA stops at its first rung) longer than a save of the search's state, which this
    # driver makes every second, so that the kill below lands while a later trial runs.
    job = tiny_job(small1_uri, small2_uri, tmp_path, *TUNE_SETS, "train.steps=8",
                   f"train.eval_episodes={RESUME_EVAL_EPISODES}")
    job_file, space_file = _files(tmp_path, job, SPACE)
    storage = tmp_path / "search"
    command = [sys.executable, "-m", "metadist", "tune", job_file, "--space", space_file, "--trials", "3",
               "--max-concurrent", "1", "--storage", str(storage), "--no-progress", "--json"]
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, env=os.environ | {"TUNE_GLOBAL_CHECKPOINT_S": "1"})
    deadline = time.monotonic() + RESUME_TIMEOUT_S / 2
    saved: set[str] = set()
    while not saved and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.1)
        saved = _finished_in_saved_state(storage)
    assert saved, "no finished trial in the search's saved state before the deadline"
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started, at once, into the next trial
    first.wait()
    done_before = _finished_trials(storage)
    assert first.returncode == -signal.SIGKILL and len(done_before) < 3

    second = subprocess.run([sys.executable, "-m", "metadist", "tune", job_file, "--storage", str(storage), "--resume",
                             "--json", "--no-progress"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=RESUME_TIMEOUT_S / 2)
    assert second.returncode == 0, second.stderr[-4000:]
    outcome = _json_at_end(second.stdout)
    assert len(outcome["trials"]) == 3 and all(t["status"] in ("finished", "stopped") for t in outcome["trials"])
    # A finished trial is not run again: its results are as they were, and its checkpoints are one run's.
    after = _finished_trials(storage)
    for trial_id, lines in done_before.items():
        assert after[trial_id] == lines
        assert len(list((storage / "trials" / trial_id / "checkpoints").glob("run-*"))) == 1


def _finished_in_saved_state(storage: Path) -> set[str]:
    """The trials that Tune's newest saved state of the search records as ended after their final evaluation."""
    found: set[str] = set()
    for state_file in sorted(storage.glob("search/experiment_state-*.json"))[-1:]:
        try:
            trials = json.loads(state_file.read_text())["trial_data"]
        except (OSError, ValueError, KeyError):  # being written
            return found
        for trial_state, runtime in trials:
            trial, last = json.loads(trial_state), json.loads(runtime).get("last_result") or {}
            if trial.get("status") == "TERMINATED" and last.get("final"):
                found.add(trial["trial_id"])
    return found


def _finished_trials(storage: Path) -> dict[str, int]:
    """trial id → lines of its result.json, for the trials that reported their final evaluation."""
    found = {}
    for results in storage.glob("search/*/result.json"):
        lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        if lines and lines[-1].get("final"):
            found[lines[-1]["trial_id"]] = len(lines)
    return found


def _json_at_end(out: str) -> dict:
    """The JSON document that ends the output (Ray forwards the trials' own prints to the driver's stdout before it)."""
    return json.loads(out[out.rindex("\n{\n") + 1 if not out.startswith("{\n") else 0:])
