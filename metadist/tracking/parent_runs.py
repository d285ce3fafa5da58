"""A search's MLflow run, the parent of one child run per trial, and the model registered from its best trial.

`metadist tune` creates the parent run here, in the driver; each trial's job carries its id as
`tracking.parent_run_id`, which the trial's MlflowTracker turns into the `mlflow.parentRunId` tag, so MLflow shows
the trials nested under the search. Every call goes through an MlflowClient bound to the resolved tracking URI
(never MLflow's process-wide state), the same URI every trial is given explicitly.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from metadist.config import TrackingConfig
from metadist.errors import TrackingError
from metadist.tracking.redaction import hide_password
from metadist.tracking.uri import resolve_tracking_uri

log = logging.getLogger(__name__)

RUNNING = "RUNNING"


@dataclass(frozen=True)
class ParentRun:
    """The search's run: where it is, and its id (saved with the search, so a resumed search continues it)."""

    tracking_uri: str
    run_id: str
    experiment_id: str


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


@contextlib.contextmanager
def _as_tracking_error(tracking_uri: str, what: str):
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise TrackingError(f"{hide_password(tracking_uri)}: could not {what}: {exc.message}") from exc


def start_parent_run(config: TrackingConfig, *, run_name: str, params: dict[str, str], tags: dict[str, str],
                     texts: dict[str, str]) -> ParentRun:
    """Create the search's run in `config.experiment` at the job's tracking URI; `texts` are artifact name → text."""
    tracking_uri = resolve_tracking_uri(config)
    client = _client(tracking_uri)
    with _as_tracking_error(tracking_uri, f"create the search's run {run_name!r}"):
        experiment = client.get_experiment_by_name(config.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.experiment)
        run = client.create_run(experiment_id, tags=tags, run_name=run_name)
        from mlflow.entities import Param

        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        for name, text in texts.items():
            client.log_text(run.info.run_id, text, name)
    log.info("MLflow search run %s in experiment %r at %s", run.info.run_id, config.experiment, hide_password(tracking_uri))
    return ParentRun(tracking_uri, run.info.run_id, experiment_id)


def resume_parent_run(tracking_uri: str, run_id: str) -> ParentRun:
    """The search's run, back to RUNNING (a resumed search)."""
    client = _client(tracking_uri)
    with _as_tracking_error(tracking_uri, f"resume the search's run {run_id}"):
        run = client.get_run(run_id)
        client.update_run(run_id, status=RUNNING)
    return ParentRun(tracking_uri, run_id, run.info.experiment_id)


def end_run(tracking_uri: str, run_id: str, status: str, *, tags: dict[str, str] | None = None,
            only_if_running: bool = False) -> None:
    """Mark a run FINISHED, FAILED or KILLED (with `tags`); with only_if_running, a run already ended is left as it is."""
    client = _client(tracking_uri)
    with _as_tracking_error(tracking_uri, f"end run {run_id}"):
        if only_if_running and client.get_run(run_id).info.status != RUNNING:
            return
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, value)
        client.set_terminated(run_id, status=status)


def log_search_summary(parent: ParentRun, metrics: dict[str, float], summary: dict, texts: dict[str, str]) -> None:
    """The search's outcome on its run: metrics, `search.json`, and text artifacts (the best job)."""
    from mlflow.entities import Metric

    client = _client(parent.tracking_uri)
    with _as_tracking_error(parent.tracking_uri, f"log the search's summary on run {parent.run_id}"):
        client.log_batch(parent.run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()])
        client.log_text(parent.run_id, json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n", "search.json")
        for name, text in texts.items():
            client.log_text(parent.run_id, text, name)


def register_model(tracking_uri: str, run_id: str, name: str, *, alias: str) -> str:
    """Register the model that run `run_id` logged (its `metadist.model_uri` tag) as a new version of `name`, moving
    `alias` to it when its test score beats the holder's (metadist.tracking.registry); returns the version."""
    from metadist.tracking.registry import register, score_of

    client = _client(tracking_uri)
    with _as_tracking_error(tracking_uri, f"register the model of run {run_id} as {name!r}"):
        run = client.get_run(run_id)
        model_uri = run.data.tags.get("metadist.model_uri")
        if model_uri is None:
            raise TrackingError(f"{hide_password(tracking_uri)}: run {run_id} logged no model (tracking.log_model is "
                                "false?); nothing to register")
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/") else None
        registration = register(client, name=name, alias=alias, model_uri=model_uri, run_id=run_id, model_id=model_id,
                                score=score_of(run.data.metrics))
        client.set_tag(run_id, "metadist.registered_model", f"{name}/{registration.version}")
    return registration.version
