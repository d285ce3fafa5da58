"""A training run recorded in a real MLflow tracking server (sqlite backend) on loopback."""

from __future__ import annotations

import time

import pytest

from metadist.training import LocalTrainer
from tests.helpers import tiny_job
from tests.mlflow_server import mlflow_server  # noqa: F401  (session fixture: a real `mlflow server`)


@pytest.fixture
def tracked_job(small1_uri, small2_uri, tmp_path, mlflow_server):  # noqa: F811
    def make(*sets):
        return tiny_job(small1_uri, small2_uri, tmp_path, "tracking.enabled=true", f"tracking.uri={mlflow_server}",
                        "tracking.experiment=trainer-tests", "train.eval_every=3", "train.eval_episodes=4", *sets)
    return make


def test_run_records_config_curves_checkpoints_plot_and_model(tracked_job):
    from mlflow import MlflowClient

    job = tracked_job(f"name=tracked-{time.time_ns()}")  # a registered model of its own
    result = LocalTrainer(job, progress=False).run()
    client = MlflowClient(job.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["algorithm.name"] == "maml" and run.data.params["train.steps"] == "6"
    assert len(run.data.params) == len(job.flat())
    for key in ("train/loss_after", "train/accuracy_after", "train/accuracy_before", "train/tasks_per_s", "train/lr_milli"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [2, 4, 6], key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "heldout/accuracy_after")] == [3]
    assert "test/accuracy_after" in run.data.metrics and "test/accuracy_after_ci95" in run.data.metrics
    # Every metric sits in a chart section: train/, heldout/, test/ (and system/, MLflow's own, every 10 s).
    assert {key.split("/")[0] for key in run.data.metrics} - {"system"} == {"train", "heldout", "test"}
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"omniglot-images_background_small1",
                                                                   "omniglot-images_background_small2"}
    # A LoggedModel per periodic checkpoint with its step's held-out metrics, the final model with the test's.
    models = {m.name: m for m in client.search_logged_models([run.info.experiment_id]) if m.source_run_id == result.run_id}
    assert set(models) == {"checkpoint-3", "model"}
    assert ("heldout/accuracy_after", 3) in {(m.key, m.step) for m in models["checkpoint-3"].metrics}
    assert ("test/accuracy_after", 6) in {(m.key, m.step) for m in models["model"].metrics}
    version = client.get_model_version_by_alias(job.name, "champion")  # registered under the job's name
    assert version.run_id == result.run_id and version.source == f"models:/{models['model'].model_id}"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"job.yaml", "checkpoints", "plots", "summary.json"} <= artifacts
    checkpoints = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert checkpoints == {"checkpoints/step-00000003.safetensors", "checkpoints/step-00000006.safetensors"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {"plots/learning_curve.png"}
    assert client.search_logged_models(experiment_ids=[run.info.experiment_id]), "final model not logged"


def test_resumed_training_continues_the_same_run(tracked_job):
    from mlflow import MlflowClient

    job = tracked_job("tracking.log_model=false")
    first = LocalTrainer(job.model_copy(update={"train": job.train.model_copy(update={"time_budget_s": 1e-9})}), progress=False)
    first.run()
    resumed = LocalTrainer(job, resume=True, progress=False)
    result = resumed.run()
    assert result.run_id == first.run_id
    client = MlflowClient(job.tracking.uri)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(result.run_id, "train/loss_after")] == [1, 2, 4, 6]


def test_a_failing_run_is_marked_failed_and_keeps_its_checkpoints(tracked_job, monkeypatch):
    from mlflow import MlflowClient

    job = tracked_job("tracking.log_model=false")
    trainer = LocalTrainer(job, progress=False)
    calls = {"n": 0}
    real = trainer.learner.compute_update

    def fail_on_fifth(params, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("worker exploded")
        return real(params, batch)

    monkeypatch.setattr(trainer.learner, "compute_update", fail_on_fifth)
    with pytest.raises(RuntimeError, match="worker exploded"):
        trainer.run()
    client = MlflowClient(job.tracking.uri)
    assert client.get_run(trainer.run_id).info.status == "FAILED"
    from metadist.core import checkpoint as ckpt_io

    assert [s for s, _ in ckpt_io.run_checkpoints(job.checkpoint.uri)] == [3]
    resumed = LocalTrainer(job, resume=True, progress=False)
    assert resumed.step == 3
