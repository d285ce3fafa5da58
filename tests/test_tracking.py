"""metadist.tracking against a real MLflow server on loopback (tests/mlflow_server.py), plus its pure parts."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import metadist
from metadist.config import JobConfig, TaskSourceConfig, TrackingConfig
from metadist.core.tasks import open_shards
from metadist.tracking import MlflowTracker, NullTracker, TrackingError, open_tracker, resolve_tracking_uri
from metadist.tracking.redaction import REDACTED, redact_job
from metadist.tracking.plots import save_learning_curve
from tests.mlflow_server import free_port, mlflow_server  # noqa: F401  (pytest fixture)

HISTORY = [
    {"step": 10, "loss_after": 1.2, "accuracy_after": 0.45, "loss_before": 1.6, "accuracy_before": 0.2, "lr": 1e-3},
    {"step": 20, "loss_after": 0.8, "accuracy_after": 0.65, "loss_before": 1.6, "accuracy_before": 0.2, "lr": 1e-3},
    {"step": 20, "val_loss_after": 0.9, "val_accuracy_after": 0.6, "val_accuracy_after_ci95": 0.05},
    {"step": 30, "loss_after": float("nan"), "accuracy_after": 0.7, "loss_before": 1.6, "accuracy_before": 0.2},
    {"step": 40, "loss_after": 0.5, "accuracy_after": 0.8, "loss_before": 1.6, "accuracy_before": 0.2},
    {"step": 40, "val_loss_after": 0.6, "val_accuracy_after": 0.75, "val_accuracy_after_ci95": 0.04},
]


@pytest.fixture
def job() -> JobConfig:
    return JobConfig()


@pytest.fixture
def config(mlflow_server) -> TrackingConfig:
    return TrackingConfig(uri=mlflow_server, experiment="metadist-tests")


@pytest.fixture
def client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def download_text(client, run_id: str, path: str, tmp_path: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(tmp_path))).read_text()


# -- the run -------------------------------------------------------------------------------------------------------
def test_start_records_params_tags_and_job_file(config, client, job, tmp_path):
    tracker = open_tracker(config, job_name=job.name)
    assert isinstance(tracker, MlflowTracker)
    tracker.start(job)
    run = client.get_run(tracker.run_id)

    assert run.info.status == "RUNNING"
    assert run.info.run_name == job.name
    assert client.get_experiment(run.info.experiment_id).name == "metadist-tests"
    assert run.data.params == job.flat()
    tags = run.data.tags
    assert tags["metadist.version"] == metadist.__version__
    assert tags["metadist.algorithm"] == "maml" and tags["metadist.model"] == "conv4"
    assert tags["metadist.dataset"] == "bundled://omniglot-small1"
    assert tags["metadist.test_dataset"] == "bundled://omniglot-small2"
    assert tags["metadist.episode"] == "5-way 1-shot"
    assert tags["python.version"].count(".") == 2 and tags["torch.version"]
    assert "mlflow.user" in tags and "mlflow.source.name" in tags  # MLflow's own context tags

    assert JobConfig.model_validate(yaml.safe_load(download_text(client, tracker.run_id, "job.yaml", tmp_path))) == job

    # The shard sets, as the run's datasets: named, digested and located by their manifests.
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "test"} and all(i.tags[0].key == "mlflow.data.context" for i in run.inputs.dataset_inputs)
    for context, source in (("training", job.data.train), ("test", job.data.test)):
        dataset, shards = inputs[context], open_shards(source, progress=False)
        assert dataset.digest == shards.manifest_sha256[:32] and len(shards.manifest_sha256) == 64
        assert dataset.source_type == "metadist-shards"
        assert json.loads(dataset.source) == {"uri": f"{source.uri}/manifest.json"}
        assert dataset.name == f"omniglot-{shards.manifest.dataset['version']}"
    assert inputs["training"].digest != inputs["test"].digest
    tracker.end()
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_run_name_from_config(config, client, job):
    tracker = open_tracker(config.model_copy(update={"run_name": "named-run"}), job_name=job.name)
    with tracker:
        tracker.start(job)
    assert client.get_run(tracker.run_id).info.run_name == "named-run"


def test_metrics_by_step_nonfinite_kept(config, client, job):
    tracker = open_tracker(config, job_name=job.name)
    tracker.start(job)
    tracker.log_metrics({"loss_after": 1.5, "accuracy_after": 0.25}, step=10)
    tracker.log_metrics({"loss_after": float("nan"), "accuracy_after": 0.5}, step=20)
    tracker.log_metrics({"loss_after": float("inf"), "accuracy_after": np.float32(0.75)}, step=30)
    tracker.end()

    loss = sorted(client.get_metric_history(tracker.run_id, "train/loss_after"), key=lambda m: m.step)
    assert [m.step for m in loss] == [10, 20, 30]
    assert loss[0].value == 1.5 and math.isnan(loss[1].value) and loss[2].value > 1e300  # inf: clamped by MLflow
    accuracy = sorted(client.get_metric_history(tracker.run_id, "train/accuracy_after"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in accuracy] == [(10, 0.25), (20, 0.5), (30, 0.75)]


def test_checkpoint_learning_curve_and_summary(config, client, job, tmp_path):
    checkpoint = tmp_path / "step-00000040.safetensors"
    checkpoint.write_bytes(b"weights" * 100)
    tracker = open_tracker(config.model_copy(update={"log_checkpoint_models": False}), job_name=job.name)
    tracker.start(job)
    tracker.log_metrics({"skipped_updates": 0.0}, step=40)
    tracker.log_checkpoint(str(checkpoint), step=40)
    tracker.log_learning_curve(HISTORY)
    tracker.log_summary({"test_accuracy_after": 0.93, "test_accuracy_after_ci95": 0.012, "test_loss_after": float("nan"),
                         "skipped_updates": 2.0})
    tracker.end()
    run_id = tracker.run_id

    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/step-00000040.safetensors"]
    downloaded = Path(client.download_artifacts(run_id, "checkpoints/step-00000040.safetensors", str(tmp_path / "dl")))
    assert downloaded.read_bytes() == checkpoint.read_bytes()
    tags = client.get_run(run_id).data.tags
    assert tags["metadist.checkpoint"] == "checkpoints/step-00000040.safetensors"
    assert tags["metadist.checkpoint_step"] == "40"

    png = Path(client.download_artifacts(run_id, "plots/learning_curve.png", str(tmp_path / "dl"))).read_bytes()
    width, height = png_size(png)
    assert 800 <= width <= 2000 and 300 <= height <= 1000 and len(png) > 20_000  # two panels with content

    summary = json.loads(download_text(client, run_id, "summary.json", tmp_path / "dl"))
    assert summary == {"test/accuracy_after": 0.93, "test/accuracy_after_ci95": 0.012, "test/loss_after": None,
                       "train/skipped_updates": 2.0}
    metrics = client.get_run(run_id).data.metrics
    assert metrics["test/accuracy_after"] == 0.93 and metrics["test/accuracy_after_ci95"] == 0.012
    assert metrics["train/skipped_updates"] == 2.0  # the summary's value wins over the training metric's
    assert [m.step for m in client.get_metric_history(run_id, "test/accuracy_after")] == [40]  # at the last step


def test_end_status_failed_and_killed(config, client, job):
    tracker = open_tracker(config, job_name=job.name)
    tracker.start(job)
    tracker.end("FAILED")
    tracker.end("FINISHED")  # a second end does nothing
    assert client.get_run(tracker.run_id).info.status == "FAILED"

    with pytest.raises(ZeroDivisionError):
        with open_tracker(config, job_name=job.name) as tracker:
            tracker.start(job)
            1 / 0
    assert client.get_run(tracker.run_id).info.status == "FAILED"

    with pytest.raises(KeyboardInterrupt):
        with open_tracker(config, job_name=job.name) as tracker:
            tracker.start(job)
            raise KeyboardInterrupt
    assert client.get_run(tracker.run_id).info.status == "KILLED"

    with pytest.raises(ValueError, match="status must be one of"):
        tracker.end("DONE")
    with pytest.raises(RuntimeError, match="has ended"):
        tracker.log_metrics({"x": 1.0}, step=1)


def test_resume_continues_the_same_run(config, client, job, tmp_path):
    first = open_tracker(config, job_name=job.name)
    first.start(job)
    first.log_metrics({"loss_after": 1.0}, step=10)
    first.end("KILLED")

    longer = job.model_copy(update={"train": job.train.model_copy(update={"steps": 1200})})
    second = open_tracker(config, job_name=job.name)
    second.start(longer, resume_run_id=first.run_id)
    assert second.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "RUNNING"
    second.log_metrics({"loss_after": 0.5}, step=20)
    second.end()

    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    history = sorted(client.get_metric_history(run.info.run_id, "train/loss_after"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(10, 1.0), (20, 0.5)]
    assert run.data.params["train.steps"] == str(job.train.steps)  # params are write-once in MLflow; the change is recorded
    assert run.data.tags["metadist.resumes"] == "1" and run.data.tags["metadist.resume-1.changed"] == "train.steps"
    resumed = yaml.safe_load(download_text(client, run.info.run_id, "job.resume-1.yaml", tmp_path))
    assert JobConfig.model_validate(resumed) == longer
    assert len(client.search_runs([run.info.experiment_id], f"attributes.run_id = '{first.run_id}'")) == 1


def test_resume_of_unknown_run_names_it(config, job):
    tracker = open_tracker(config, job_name=job.name)
    with pytest.raises(TrackingError, match="0123456789abcdef0123456789abcdef") as info:
        tracker.start(job, resume_run_id="0123456789abcdef0123456789abcdef")
    assert config.uri in str(info.value)


def test_unreachable_server_fails_fast_naming_the_uri(job):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracker = open_tracker(TrackingConfig(uri=uri), job_name=job.name)
    started = time.monotonic()
    with pytest.raises(TrackingError, match="not reachable") as info:
        tracker.start(job)
    assert uri in str(info.value)
    assert time.monotonic() - started < 5.0


def test_deleted_experiment_is_reported(mlflow_server, client, job):
    experiment_id = client.create_experiment(f"deleted-{time.time_ns()}")
    name = client.get_experiment(experiment_id).name
    client.delete_experiment(experiment_id)
    with pytest.raises(TrackingError, match="is deleted"):
        open_tracker(TrackingConfig(uri=mlflow_server, experiment=name), job_name=job.name).start(job)


def test_not_started_tracker_refuses_to_log(config):
    tracker = open_tracker(config, job_name="x")
    with pytest.raises(RuntimeError, match="not started"):
        tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.end()  # before start: nothing to end


# -- the final model -------------------------------------------------------------------------------------------------
def _tiny_checkpoint(directory: Path) -> str:
    pytest.importorskip("metadist.inference", reason="inference not yet available")
    from metadist.config import AlgorithmConfig, ModelConfig
    from metadist.data.images import ImagePreprocessing
    from metadist.core import checkpoint as ckpt_io
    from metadist.core import ModelSpec, build

    job = JobConfig(algorithm=AlgorithmConfig(name="protonet"), model=ModelConfig(hidden=4))
    spec = ModelSpec("classification", (1, 28, 28), None, ImagePreprocessing(mode="L", size=(28, 28)).to_dict())
    _, learner = build(job, spec)
    return ckpt_io.save(ckpt_io.Checkpoint(job, spec, 7, learner.init_meta_params()), str(directory))


def _png(shade: int, size: int = 40) -> bytes:
    from PIL import Image

    image = Image.new("L", (size, size), color=255)
    image.paste(shade, (5, 5, size // 2, size - 5))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_log_model_loads_and_predicts(config, client, job, tmp_path, monkeypatch):
    import mlflow

    checkpoint = _tiny_checkpoint(tmp_path / "checkpoints")
    global_uri_before = mlflow.get_tracking_uri()
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    tracker = open_tracker(config, job_name=job.name)
    tracker.start(job)
    tracker.log_model(checkpoint)
    tracker.end()
    assert mlflow.get_tracking_uri() == global_uri_before and os.environ.get("MLFLOW_TRACKING_URI") == env_before
    assert client.get_run(tracker.run_id).data.tags["metadist.model_uri"] == tracker.model_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", config.uri)  # as a user would, to resolve runs:/ URIs
    model = mlflow.pyfunc.load_model(f"runs:/{tracker.run_id}/model")
    dark, light = _png(0), _png(200)
    labels = ["dark", "light"]
    one_task = {"support_images": [dark, light], "support_labels": labels, "query_images": [dark, light, dark]}
    out = model.predict(one_task)
    assert list(out.columns) == ["predictions", "scores"] and len(out) == 1
    predictions, scores = list(out["predictions"][0]), list(out["scores"][0])
    assert len(predictions) == 3 and set(predictions) <= set(labels)
    assert all(set(s) == set(labels) and abs(sum(s.values()) - 1.0) < 1e-6 for s in scores)
    assert predictions[0] == predictions[2]  # the same image, the same answer

    # Base64 text (what REST clients send) gives the same answer; several tasks are several rows.
    b64 = lambda images: [base64.b64encode(x).decode() for x in images]  # noqa: E731
    import pandas as pd

    rows = pd.DataFrame([
        {**one_task, "support_images": b64(one_task["support_images"]), "query_images": b64(one_task["query_images"])},
        {"support_images": [light, dark], "support_labels": ["l", "d"], "query_images": [light]},
    ])  # fmt: skip
    out = model.predict(rows)
    assert len(out) == 2 and list(out["predictions"][0]) == predictions and len(out["predictions"][1]) == 1


def test_registry_alias_moves_only_to_a_better_version(config, client, job):
    from metadist.tracking.registry import Score, register, score_of

    name = f"alias-test-{time.time_ns()}"
    tracker = open_tracker(config, job_name=job.name)
    tracker.start(job)
    run_id = tracker.run_id

    def version(accuracy: float | None):
        model = client.create_logged_model(tracker.experiment_id, source_run_id=run_id)
        score = None if accuracy is None else Score("test/accuracy_after", accuracy, True)
        return register(client, name=name, alias="champion", model_uri=f"models:/{model.model_id}", run_id=run_id,
                        model_id=model.model_id, score=score)

    def champion() -> str:
        return client.get_model_version_by_alias(name, "champion").version

    assert version(None).alias_moved is False  # no test score: no alias
    first = version(0.5)
    assert first.alias_moved and first.holder is None and champion() == first.version
    assert not version(0.4).alias_moved and champion() == first.version  # worse
    tie = version(0.5)
    assert not tie.alias_moved and tie.holder == first.version and tie.holder_score == 0.5  # a tie keeps the holder
    assert not version(float("nan")).alias_moved
    best = version(0.75)
    assert best.alias_moved and champion() == best.version
    assert client.get_model_version(name, best.version).tags == {"metadist.score_metric": "test/accuracy_after",
                                                                  "metadist.score": "0.75"}
    # A holder set by hand, without a score anywhere, gives the alias up.
    bare_id = client.create_logged_model(tracker.experiment_id).model_id
    bare = client.create_model_version(name, f"models:/{bare_id}", model_id=bare_id)
    client.set_registered_model_alias(name, "champion", bare.version)
    assert version(0.1).alias_moved
    tracker.end()

    # The score: test accuracy, higher is better; for regression, test loss, lower is better.
    assert score_of({"test/accuracy_after": 0.9, "test/loss_after": 0.2}) == Score("test/accuracy_after", 0.9, True)
    loss = score_of({"test/loss_after": 0.2})
    assert loss == Score("test/loss_after", 0.2, False) and loss.beats(0.3) and not loss.beats(0.1)
    assert score_of({"train/loss_after": 0.2}) is None


def test_log_model_registers_it_under_the_alias(config, client, job, tmp_path):
    name = f"registered-{time.time_ns()}"
    checkpoint = _tiny_checkpoint(tmp_path / "checkpoints")
    tracker = open_tracker(config.model_copy(update={"registered_model": name, "alias": "best"}), job_name=job.name)
    tracker.start(job)
    tracker.log_metrics({"loss_after": 1.0}, step=7)
    tracker.log_summary({"test_accuracy_after": 0.6, "test_accuracy_after_ci95": 0.1})
    tracker.log_model(checkpoint)
    tracker.end()

    holder = client.get_model_version_by_alias(name, "best")
    assert tracker.registration.alias_moved and holder.version == tracker.registration.version == "1"
    assert holder.run_id == tracker.run_id and holder.source == tracker.model_uri
    (model,) = [m for m in client.search_logged_models([tracker.experiment_id]) if m.source_run_id == tracker.run_id]
    assert model.name == "model"
    linked = {(m.key, m.step) for m in model.metrics}  # the metrics of the last step, the final test among them
    assert {("test/accuracy_after", 7), ("test/accuracy_after_ci95", 7), ("train/loss_after", 7)} <= linked
    assert client.get_run(tracker.run_id).data.tags["metadist.registered_model"] == f"{name}/1"


def test_each_checkpoint_is_a_logged_model_with_its_step_metrics(config, client, job, tmp_path):
    checkpoint = _tiny_checkpoint(tmp_path / "checkpoints")
    tracker = open_tracker(config.model_copy(update={"log_model": False}), job_name=job.name)
    tracker.start(job)
    tracker.log_metrics({"loss_after": 1.0}, step=5)
    tracker.log_metrics({"val_accuracy_after": 0.55}, step=5)
    tracker.log_checkpoint(checkpoint, step=5)
    tracker.log_metrics({"loss_after": 0.5}, step=10)
    tracker.end()

    (model,) = [m for m in client.search_logged_models([tracker.experiment_id]) if m.source_run_id == tracker.run_id]
    assert model.name == "checkpoint-5" and model.tags["metadist.step"] == "5"
    assert {(m.key, m.step, m.value) for m in model.metrics} == {("heldout/accuracy_after", 5, 0.55),
                                                                  ("train/loss_after", 5, 1.0)}
    outputs = client.get_run(tracker.run_id).outputs.model_outputs
    assert [(o.model_id, o.step) for o in outputs] == [(model.model_id, 5)]


@pytest.mark.server
@pytest.mark.slow
def test_mlflow_models_serve_answers_a_rest_request(config, job, tmp_path):
    """`mlflow models serve` of a logged model on loopback, asked over REST as docs/serving.md says."""
    import urllib.request

    checkpoint = _tiny_checkpoint(tmp_path / "checkpoints")
    tracker = open_tracker(config.model_copy(update={"register_model": False}), job_name=job.name)
    tracker.start(job)
    tracker.log_model(checkpoint)
    tracker.end()

    port = free_port()
    # MLflow runs `uvicorn` by name: this interpreter's scripts come first on PATH.
    env = {**os.environ, "MLFLOW_TRACKING_URI": config.uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", tracker.model_uri, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        dark, light = _png(0), _png(200)
        b64 = lambda images: [base64.b64encode(x).decode() for x in images]  # noqa: E731
        body = {"dataframe_records": [
            {"support_images": b64([dark, light]), "support_labels": ["dark", "light"], "query_images": b64([dark, light, dark])},
        ]}  # fmt: skip
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own group: mlflow, and the uvicorn it started
        proc.wait(timeout=30)
    (row,) = answer["predictions"]
    assert len(row["predictions"]) == 3 and set(row["predictions"]) <= {"dark", "light"}
    assert row["predictions"][0] == row["predictions"][2]
    assert all(abs(sum(s.values()) - 1.0) < 1e-6 for s in row["scores"])


# -- pure parts: no server -------------------------------------------------------------------------------------------
def test_metric_names_are_grouped_by_prefix():
    from metadist.tracking.metric_names import mlflow_name, mlflow_names

    assert mlflow_name("loss_after") == "train/loss_after"
    assert mlflow_names({"lr": 0.002, "val_loss_after": 1.5}) == {"train/lr_milli": 2.0, "heldout/loss_after": 1.5}
    assert mlflow_name("val_accuracy_after") == "heldout/accuracy_after"
    assert mlflow_name("test_accuracy_after_ci95") == "test/accuracy_after_ci95"
    assert mlflow_name("staleness_max") == "distributed/staleness_max"
    assert mlflow_name("worker/3/tasks_per_s") == "distributed/worker/3/tasks_per_s"
    assert mlflow_name("system/cpu_utilization_percentage") == "system/cpu_utilization_percentage"


def test_null_tracker_records_nothing_and_imports_no_mlflow():
    code = (
        "import sys\n"
        "from metadist.config import JobConfig, TrackingConfig\n"
        "from metadist.tracking import NullTracker, open_tracker\n"
        "t = open_tracker(TrackingConfig(enabled=False), job_name='j')\n"
        "assert isinstance(t, NullTracker) and t.run_id is None\n"
        "t.start(JobConfig()); t.log_metrics({'a': 1.0}, step=1); t.log_checkpoint('/nonexistent', step=1)\n"
        "t.log_learning_curve([]); t.log_summary({'a': 1.0}); t.log_model('/nonexistent'); t.end('FAILED')\n"
        "assert t.run_id is None\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('mlflow', 'matplotlib')], 'imported mlflow'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).parent.parent)


def test_tracking_uri_order(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert resolve_tracking_uri(TrackingConfig()) == "http://127.0.0.1:1"
    assert resolve_tracking_uri(TrackingConfig(uri="sqlite:///elsewhere.db")) == "sqlite:///elsewhere.db"
    assert open_tracker(TrackingConfig(uri="http://127.0.0.1:2"), job_name="j").tracking_uri == "http://127.0.0.1:2"
    assert isinstance(open_tracker(TrackingConfig(enabled=False, uri="http://127.0.0.1:2"), job_name="j"), NullTracker)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, from inside MLflow's sqlite store
def test_default_local_store(monkeypatch, tmp_path, job):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = open_tracker(TrackingConfig(), job_name=job.name)
    tracker.start(job)
    tracker.log_metrics({"loss_after": 1.0}, step=1)
    tracker.end()
    assert (tmp_path / "mlflow.db").is_file()
    local = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert local.get_run(tracker.run_id).info.status == "FINISHED"
    assert [a.path for a in local.list_artifacts(tracker.run_id)] == ["job.yaml"]
    assert (tmp_path / "mlruns").is_dir()  # MLflow's artifact root for a local sqlite store


def test_credentials_are_redacted():
    secret_source = TaskSourceConfig(
        uri="s3://bucket/omniglot",
        storage_options={"key": "AKIA123", "secret": "s3cr3t", "endpoint_url": "http://127.0.0.1:9000",
                         "client_kwargs": {"aws_session_token": "tok", "region_name": "eu"}},
    )
    job = JobConfig.model_validate({**JobConfig().model_dump(), "data": {"train": secret_source.model_dump()}})
    flat = redact_job(job).flat()
    assert flat["data.train.storage_options.key"] == REDACTED and flat["data.train.storage_options.secret"] == REDACTED
    assert flat["data.train.storage_options.client_kwargs.aws_session_token"] == REDACTED
    assert flat["data.train.storage_options.endpoint_url"] == "http://127.0.0.1:9000"
    assert flat["data.train.storage_options.client_kwargs.region_name"] == "eu"
    assert "AKIA123" not in str(redact_job(job).model_dump()) and redact_job(JobConfig()) == JobConfig()

    # Each of several training sources is scrubbed too, and its params are numbered.
    listed = JobConfig.model_validate({**JobConfig().model_dump(), "data": {"train": [
        {"uri": "s3://bucket/a", "weight": 3}, {**secret_source.model_dump(), "weight": 1}]}})
    flat = redact_job(listed).flat()
    assert flat["data.train.1.storage_options.secret"] == REDACTED and flat["data.train.0.weight"] == "3.0"
    assert "s3cr3t" not in str(redact_job(listed).model_dump())

    with_password = JobConfig(tracking=TrackingConfig(uri="https://me:pw@mlflow.example.com/x"))
    assert redact_job(with_password).tracking.uri == f"https://me:{REDACTED}@mlflow.example.com/x"
    assert open_tracker(with_password.tracking, job_name="j").display_uri == f"https://me:{REDACTED}@mlflow.example.com/x"


def test_learning_curve_regression_has_one_panel(tmp_path):
    two = png_size(save_learning_curve(HISTORY, tmp_path / "two.png").read_bytes())
    regression = [{"step": s, "loss_after": 10.0**-s} for s in range(5)]
    one = png_size(save_learning_curve(regression, tmp_path / "one.png").read_bytes())
    assert one[0] < two[0] * 0.7 and one[1] == two[1]
    with pytest.raises(ValueError, match="no loss or accuracy"):
        save_learning_curve([{"step": 1, "lr": 0.1}], tmp_path / "none.png")
