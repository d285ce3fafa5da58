"""The MLflow run of a training job: parameters, tags, datasets, metrics, checkpoints and their models, plots, the
final model and its registry version.

>>> tracker = open_tracker(job.tracking, job_name=job.name)    # a NullTracker when tracking is disabled
>>> tracker.start(job)                                          # or start(job, resume_run_id=...) to continue
>>> tracker.log_metrics({"loss_after": 0.41}, step=10)         # recorded as train/loss_after
>>> tracker.end("FINISHED")

Metric names: the loop's keys, grouped by prefix for MLflow (metadist.tracking.metric_names). The shard sets are
the run's dataset inputs (metadist.tracking.datasets). Each periodic checkpoint becomes a LoggedModel with the
metrics of its step linked, the final one the model `model`, registered with an alias (metadist.tracking.registry).

Every call goes through an `MlflowClient` bound to the resolved URI and the run id, never through MLflow's
process-wide active run, so trackers in several threads (or Ray actors) do not see each other. The one exception
is model logging: MLflow's `Model.log` reads the process-wide tracking URI, which is set for its duration only,
under a lock.

Where the run goes: see metadist.tracking.uri. Artifacts of the local default store go to <cwd>/mlruns/, as MLflow
does; view both with `mlflow ui --backend-store-uri sqlite:///mlflow.db` run in the same directory.

An unreachable http(s) server is reported by `start` at once (a /health probe), as a TrackingError naming
the URI. Later, MLflow's own retry policy applies: MLFLOW_HTTP_REQUEST_MAX_RETRIES (default 7) with
exponential backoff MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR (2) and MLFLOW_HTTP_REQUEST_TIMEOUT (120 s) per
request, so a server that dies mid-run stalls a logging call for about 4 minutes before it raises.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import ssl
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import yaml

from metadist.config import JobConfig, TrackingConfig
from metadist.errors import TrackingError
from metadist.tracking.environment import model_requirements, run_tags
from metadist.tracking.metric_names import mlflow_names
from metadist.tracking.redaction import hide_password, redact_job
from metadist.tracking.system_metrics import SystemMetricsTarget, start_system_metrics
from metadist.tracking.uri import process_tracking_uri, resolve_tracking_uri

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # metadist/, packaged with every logged model
# Left out of a logged model's copy of metadist: what loading it never reads (the bundled Omniglot zips, 2.9 MB).
PACKAGE_LEFT_OUT = ("__pycache__", "*.zip")
log = logging.getLogger(__name__)

HEALTH_PROBE_TIMEOUT_S = 10.0
# MLflow's limits (mlflow.utils.validation): a longer param value is rejected, so it is cut (job.yaml keeps all).
MAX_PARAM_VALUE_CHARS = 6000
TRUNCATION_MARK = "...[truncated; see job.yaml]"
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
MODEL_NAME = "model"  # runs:/<run id>/model
CHECKPOINT_MODEL_NAME = "checkpoint-{step}"  # a periodic checkpoint's LoggedModel
MODEL_TYPE = "metadist-few-shot-classifier"
PARENT_RUN_TAG = "mlflow.parentRunId"


def open_tracker(config: TrackingConfig, *, job_name: str) -> "Tracker":
    """The job's tracker: an MlflowTracker, or a NullTracker when `config.enabled` is False."""
    if not config.enabled:
        return NullTracker()
    return MlflowTracker(config, job_name=job_name)


class Tracker(Protocol):
    """What the trainer calls. `run_id` is None until `start` (and always, for the NullTracker)."""

    run_id: str | None

    def start(self, job: JobConfig, *, resume_run_id: str | None = None) -> None: ...
    def system_metrics_target(self) -> SystemMetricsTarget | None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_checkpoint(self, uri: str, step: int) -> None: ...
    def log_learning_curve(self, history: list[dict]) -> None: ...
    def log_summary(self, metrics: dict[str, float]) -> None: ...
    def log_model(self, checkpoint_uri: str) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Tracking disabled: the same calls, recording nothing."""

    run_id: str | None = None

    def start(self, job: JobConfig, *, resume_run_id: str | None = None) -> None:
        pass

    def system_metrics_target(self) -> SystemMetricsTarget | None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_checkpoint(self, uri: str, step: int) -> None:
        pass

    def log_learning_curve(self, history: list[dict]) -> None:
        pass

    def log_summary(self, metrics: dict[str, float]) -> None:
        pass

    def log_model(self, checkpoint_uri: str) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass

    def __enter__(self) -> "NullTracker":
        return self

    def __exit__(self, *exc) -> None:
        pass


# -- the MLflow run ------------------------------------------------------------------------------------------------
class MlflowTracker:
    """One MLflow run, addressed by id through a client bound to one tracking URI.

    Metric values are logged as given, NaN and ±inf included: MLflow stores NaN as NaN and clamps ±inf to
    ±1.797e308 (the largest double), so a diverged step shows in the charts instead of vanishing.
    """

    def __init__(self, config: TrackingConfig, *, job_name: str) -> None:
        self.config = config
        self.job_name = job_name
        self.tracking_uri = resolve_tracking_uri(config)
        self.display_uri = hide_password(self.tracking_uri)  # for messages and logs
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.model_uri: str | None = None  # set by log_model: where mlflow.pyfunc.load_model finds the model
        self._job: JobConfig = JobConfig()  # the (redacted) job of this run, once started
        self._client: Any = None  # an MlflowClient bound to tracking_uri, once started (mlflow is imported lazily)
        self._system_metrics: Any = None
        self._ended = False
        self._last_step = 0  # highest step given to log_metrics: where log_summary puts the final values
        self._summary: dict[str, float] = {}  # the final metrics (MLflow names), for the registry's comparison
        self.registration: Any = None  # metadist.tracking.registry.Registration of the final model, once registered
        # On a resumed run: metric key → the last step it was logged at. A run killed without a chance to save (SIGKILL)
        # logged points after its last checkpoint; the resumed run recomputes those steps, and skips logging them again.
        self._logged_through: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def start(self, job: JobConfig, *, resume_run_id: str | None = None) -> None:
        """Create (or resume) the run and record the job: params, tags, `job.yaml`."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        if self.run_id is not None:
            raise RuntimeError(f"tracker already started run {self.run_id}")
        self._probe()
        try:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        except MlflowException as exc:  # a scheme MLflow has no store for (bogus://, a misspelt sqlite://)
            message = " ".join(exc.message.replace(self.tracking_uri, self.display_uri).split())
            raise TrackingError(f"{self.display_uri}: not a tracking URI MLflow can use ({message})") from exc
        safe_job = self._job = redact_job(job)
        try:
            if resume_run_id is not None:
                self._resume(resume_run_id, safe_job)
            else:
                self._create(safe_job)
        except MlflowException as exc:
            if self.run_id is not None and resume_run_id is None:  # created, then failed: do not leave it RUNNING
                with contextlib.suppress(MlflowException):
                    self._client.set_terminated(self.run_id, status="FAILED")
            raise TrackingError(f"{self.display_uri}: could not start the MLflow run: {exc.message}") from exc
        self._system_metrics = start_system_metrics(self.system_metrics_target(), resumed=resume_run_id is not None)
        log.info("MLflow run %s in experiment %r at %s", self.run_id, self.config.experiment, self.display_uri)

    def _create(self, job: JobConfig) -> None:
        from mlflow.tracking.context.registry import resolve_tags

        self.experiment_id = self._experiment_id()
        tags = resolve_tags(run_tags(job))  # adds mlflow.user, mlflow.source.*, the git commit when there is one
        if self.config.parent_run_id:  # MLflow nests a run under the one this tag names (`metadist tune`'s trials)
            tags[PARENT_RUN_TAG] = self.config.parent_run_id
        run = self._client.create_run(self.experiment_id, tags=tags, run_name=self.config.run_name or self.job_name)
        self.run_id = run.info.run_id
        self._log_params(job.flat())
        self._client.log_text(self.run_id, job_yaml(job), "job.yaml")
        self._log_datasets(job)

    def _log_datasets(self, job: JobConfig) -> None:
        from metadist.tracking.datasets import dataset_inputs, shard_datasets

        inputs = dataset_inputs(shard_datasets(job))
        if inputs:
            self._client.log_inputs(self.run_id, datasets=inputs)

    def system_metrics_target(self) -> SystemMetricsTarget | None:
        """Where the system metrics of this run go, for a monitor in any process (a task worker, the server)."""
        return SystemMetricsTarget.from_env(self.tracking_uri, self._require_run())

    def _resume(self, run_id: str, job: JobConfig) -> None:
        """Continue run `run_id`: status back to RUNNING, new params added, changed ones reported."""
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException as exc:
            raise TrackingError(
                f"{self.display_uri}: cannot resume MLflow run {run_id!r} ({exc.message}); point tracking.uri at the "
                "store that holds it, or disable tracking"
            ) from exc
        self.run_id, self.experiment_id = run_id, run.info.experiment_id
        self._client.update_run(run_id, status="RUNNING")
        self._logged_through = {
            key: max(m.step for m in self._client.get_metric_history(run_id, key)) for key in run.data.metrics
        }
        logged = run.data.params
        flat = {k: _param_value(v) for k, v in job.flat().items()}
        self._log_params({k: v for k, v in flat.items() if k not in logged})
        changed = sorted(k for k, v in flat.items() if k in logged and logged[k] != v)
        resumes = int(run.data.tags.get("metadist.resumes", "0")) + 1
        self._client.set_tag(run_id, "metadist.resumes", str(resumes))
        if changed:
            # MLflow params are write-once: the resumed job's values are kept in its own job file and a tag.
            log.warning("run %s resumed with changed settings %s (params keep the first values; see job.resume-%d.yaml)",
                        run_id, changed, resumes)
            self._client.set_tag(run_id, f"metadist.resume-{resumes}.changed", ",".join(changed)[:MAX_PARAM_VALUE_CHARS])
        self._client.log_text(run_id, job_yaml(job), f"job.resume-{resumes}.yaml")

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        name = self.config.experiment
        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self._client.create_experiment(name)
            except MlflowException:
                experiment = self._client.get_experiment_by_name(name)  # created meanwhile by another process
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise TrackingError(
                f"{self.display_uri}: MLflow experiment {name!r} is deleted; restore it "
                f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or set tracking.experiment"
            )
        return experiment.experiment_id

    def end(self, status: str = "FINISHED") -> None:
        """Close the run as FINISHED, FAILED or KILLED. A second call, or one before `start`, does nothing."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"status must be one of {TERMINAL_STATUSES}, got {status!r}")
        if self.run_id is None or self._ended:
            return
        if self._system_metrics is not None:
            self._system_metrics.finish()
            self._system_metrics = None
        with self._failing_as_tracking_error(f"end run {self.run_id}"):
            self._client.set_terminated(self.run_id, status=status)
        self._ended = True

    def __enter__(self) -> "MlflowTracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    # -- logging -----------------------------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Metrics at an outer step, in one request, under their MLflow names (train/loss_after ...). Values are
        converted with float() (numpy, 0-d tensors)."""
        from mlflow.entities import Metric

        run_id = self._require_run()
        timestamp_ms = int(time.time() * 1000)
        entries = [Metric(key, float(value), timestamp_ms, int(step)) for key, value in mlflow_names(metrics).items()
                   if int(step) > self._logged_through.get(key, -1)]
        if entries:
            with self._failing_as_tracking_error("log metrics"):
                self._client.log_batch(run_id, metrics=entries)
        self._last_step = max(self._last_step, int(step))

    def log_checkpoint(self, uri: str, step: int) -> None:
        """Upload a checkpoint file (or directory; any fsspec URI) under `checkpoints/`; tags the run with the newest.

        With tracking.log_checkpoint_models, a checkpoint file also becomes a pyfunc LoggedModel named
        checkpoint-<step>, with the metrics logged at its step (train/..., and heldout/... when an evaluation fell on
        it) linked to it. Not the final step's: with log_model, the final model stands for it.
        """
        run_id = self._require_run()
        with local_copy(uri) as local:
            self._upload_checkpoint(run_id, uri, Path(local), step)
            config = self.config
            final = config.log_model and int(step) >= self._job.train.steps
            if config.log_checkpoint_models and Path(local).is_file() and not final:
                self._log_pyfunc(local, CHECKPOINT_MODEL_NAME.format(step=int(step)), step=int(step))

    def _upload_checkpoint(self, run_id: str, uri: str, path: Path, step: int) -> None:
        if not path.exists():
            raise FileNotFoundError(f"{uri}: no such checkpoint to log")
        with self._failing_as_tracking_error(f"log checkpoint {uri}"):
            if path.is_dir():
                self._client.log_artifacts(run_id, str(path), f"checkpoints/{path.name}")
            else:
                self._client.log_artifact(run_id, str(path), "checkpoints")
            self._client.set_tag(run_id, "metadist.checkpoint", f"checkpoints/{path.name}")
            self._client.set_tag(run_id, "metadist.checkpoint_step", str(int(step)))

    def log_learning_curve(self, history: list[dict]) -> None:
        """Draw the loss/accuracy curves of `history` into the artifact `plots/learning_curve.png`."""
        from metadist.tracking.plots import save_learning_curve

        run_id = self._require_run()
        if not history:
            log.warning("run %s: empty history, no learning curve logged", run_id)
            return
        with tempfile.TemporaryDirectory(prefix="metadist-plot-") as tmp:
            png = save_learning_curve(history, Path(tmp) / "learning_curve.png", title=self.config.run_name or self.job_name)
            with self._failing_as_tracking_error("log the learning curve"):
                self._client.log_artifact(run_id, str(png), "plots")

    def log_summary(self, metrics: dict[str, float]) -> None:
        """Final metrics (MLflow names): logged as metrics and as `summary.json` (non-finite values are null there:
        JSON has no NaN).

        The metrics go in at the last step logged so far (0 if none): MLflow shows a key's value at its highest
        step, so a summary key that is also a training metric (skipped_updates) shows its final value, and
        charts put the final evaluation at the end of the run.
        """
        from mlflow.entities import Metric

        run_id = self._require_run()
        timestamp_ms = int(time.time() * 1000)
        values = mlflow_names(metrics)
        self._summary.update(values)
        with self._failing_as_tracking_error("log the summary"):
            entries = [Metric(k, v, timestamp_ms, self._last_step) for k, v in values.items()]
            self._client.log_batch(run_id, metrics=entries)
            summary = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
            self._client.log_text(run_id, json.dumps(summary, indent=2, sort_keys=True) + "\n", "summary.json")

    def log_model(self, checkpoint_uri: str) -> None:
        """Log the final checkpoint as the MLflow pyfunc `model` (see metadist.tracking.pyfunc_model), at the last
        step (so the final test/... metrics are linked to it), and register it (tracking.register_model).

        Loading it: mlflow.pyfunc.load_model(tracker.model_uri) or f"runs:/{run_id}/model", or, registered,
        "models:/<registered model>@champion".
        """
        run_id = self._require_run()
        with local_copy(checkpoint_uri) as path:
            if not Path(path).is_file():
                raise FileNotFoundError(f"{checkpoint_uri}: no such checkpoint file to log as the model")
            info = self._log_pyfunc(path, MODEL_NAME, step=self._last_step)
        with self._failing_as_tracking_error("tag the model"):
            self._client.set_tag(run_id, "metadist.model_uri", info.model_uri)
        self.model_uri = info.model_uri
        if self.config.register_model:
            self._register(info)

    def _log_pyfunc(self, path: str, name: str, *, step: int) -> Any:
        """The checkpoint file at `path` as a pyfunc LoggedModel of this run at `step`; its ModelInfo.

        The model holds the checkpoint, the metadist package (code_paths, less PACKAGE_LEFT_OUT), explicit pip
        requirements (no requirement inference, which would import the model and may query package indexes) and no
        pickle: the Python model is "models from code", a two-line script that builds FewShotPyfunc at load time.
        MLflow links the run's metrics logged at `step` to the model.
        """
        import mlflow
        from mlflow.models import Model

        from metadist.tracking.pyfunc_model import ARTIFACT_KEY, ENTRY_SCRIPT, signature

        run_id = self._require_run()
        with (
            tempfile.TemporaryDirectory(prefix="metadist-model-") as tmp,
            self._failing_as_tracking_error(f"log the model {name}"),
            process_tracking_uri(self.tracking_uri),
            warnings.catch_warnings(),
        ):
            # No input example on purpose: validating one would load the checkpoint and run the network.
            warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
            entry = Path(tmp) / "fewshot_model.py"
            entry.write_text(ENTRY_SCRIPT)
            code = Path(tmp) / "code" / PACKAGE_DIR.name
            shutil.copytree(PACKAGE_DIR, code, ignore=shutil.ignore_patterns(*PACKAGE_LEFT_OUT))
            # Created here, in the run's experiment: left to Model.log, it would land in the process's active
            # (or the default) experiment, where `runs:/<run id>/model` does not find it.
            logged = self._client.create_logged_model(
                self.experiment_id, name=name, source_run_id=run_id, model_type=MODEL_TYPE,
                params={k: _param_value(v) for k, v in self._job.flat().items()},
                tags={**run_tags(self._job), "metadist.step": str(step)},
            )
            return Model.log(
                artifact_path=None,  # deprecated in MLflow 3 in favour of name, but still a required argument
                name=name,
                model_id=logged.model_id,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                step=step,
                python_model=str(entry),
                artifacts={ARTIFACT_KEY: path},
                code_paths=[str(code)],
                pip_requirements=model_requirements(),
                signature=signature(),
            )

    def _register(self, info: Any) -> None:
        from metadist.tracking.registry import register, score_of

        config = self.config
        with self._failing_as_tracking_error("register the model"):
            self.registration = register(
                self._client, name=config.registered_model or self.job_name, alias=config.alias,
                model_uri=info.model_uri, run_id=self._require_run(), model_id=info.model_id,
                score=score_of(self._summary),
            )
        self._client.set_tag(self.run_id, "metadist.registered_model",
                             f"{self.registration.name}/{self.registration.version}")

    # -- helpers -----------------------------------------------------------------------------------------------------
    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("tracker not started: call start(job) first")
        if self._ended:
            raise RuntimeError(f"MLflow run {self.run_id} has ended")
        return self.run_id

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        # The client splits this into requests of at most 100 params (MLflow's batch limit).
        self._client.log_batch(self.run_id, params=[Param(k, _param_value(v)) for k, v in params.items()])

    def _probe(self) -> None:
        """Fail at once, naming the URI, when an http(s) tracking server does not answer at all."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return
        url = self.tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=HEALTH_PROBE_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            pass  # it answered (an auth proxy, a path prefix ...): MLflow's own requests will tell the rest
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLError):
                return  # TLS settings are MLflow's business (MLFLOW_TRACKING_SERVER_CERT_PATH ...)
            raise TrackingError(f"{self.display_uri}: MLflow tracking server not reachable ({reason})") from exc

    @contextlib.contextmanager
    def _failing_as_tracking_error(self, what: str):
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            raise TrackingError(f"{self.display_uri}: run {self.run_id}: could not {what}: {exc.message}") from exc


# -- what goes into the run ----------------------------------------------------------------------------------------
def job_yaml(job: JobConfig) -> str:
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)


def _param_value(value: str) -> str:
    value = str(value)
    if len(value) <= MAX_PARAM_VALUE_CHARS:
        return value
    return value[: MAX_PARAM_VALUE_CHARS - len(TRUNCATION_MARK)] + TRUNCATION_MARK


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local path to the checkpoint at `uri` for the block: the path itself for a local file or file:// URI;
    otherwise (s3:// ...) a copy fetched into a temporary folder, removed when the block ends. MLflow uploads only
    from local files."""
    if uri.startswith("file://") or "://" not in uri:
        yield unquote(urlparse(uri).path) if uri.startswith("file://") else uri
        return
    from metadist.data.uri import filesystem

    fs, remote = filesystem(uri)
    with tempfile.TemporaryDirectory(prefix="metadist-ckpt-") as tmp:
        local = str(Path(tmp) / remote.rstrip("/").rsplit("/", 1)[-1])
        if fs.exists(remote):
            fs.get(remote, local, recursive=fs.isdir(remote))
        yield local


