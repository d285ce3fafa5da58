"""The final model in MLflow's Model Registry: a new version of `tracking.registered_model` (default: the job name)
per finished run, and `tracking.alias` ("champion") on the best version so far.

The alias moves to the new version only when its score beats the current holder's: test accuracy (higher is
better), or for a regression job, which has no accuracy, test loss (lower is better). A tie keeps the holder; a
NaN score never takes the alias. Each version records its score in the tags `metadist.score_metric` and
`metadist.score`; a holder without them (registered by hand) is scored by its run's metric of the same name, and a
holder with no score at all gives the alias up. Two runs finishing at the same moment may both compare against the
same holder: the registry has no compare-and-set, so the later `set` wins.

    >>> client.get_model_version_by_alias("omniglot-5way-1shot", "champion")   # the best version
    >>> mlflow.pyfunc.load_model("models:/omniglot-5way-1shot@champion")
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SCORE_METRIC_TAG = "metadist.score_metric"
SCORE_TAG = "metadist.score"
# (MLflow metric name, higher is better), in order of preference.
SCORES = (("test/accuracy_after", True), ("test/loss_after", False))


@dataclass(frozen=True)
class Score:
    metric: str
    value: float
    higher_is_better: bool

    def beats(self, held: float | None) -> bool:
        if not math.isfinite(self.value):
            return False
        if held is None or not math.isfinite(held):
            return True
        return self.value > held if self.higher_is_better else self.value < held


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str
    alias_moved: bool
    holder: str | None  # the version that held the alias before (None: nobody)
    holder_score: float | None


def score_of(metrics: dict[str, float]) -> Score | None:
    """The score a run's final metrics (MLflow names) give its model; None without a test evaluation."""
    for metric, higher in SCORES:
        if metric in metrics:
            return Score(metric, float(metrics[metric]), higher)
    return None


def register(client: Any, *, name: str, alias: str, model_uri: str, run_id: str, model_id: str | None,
             score: Score | None) -> Registration:
    """A new version of registered model `name` from the logged model; `alias` moved to it if it beats the holder."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        client.create_registered_model(name, description="metadist few-shot classifiers (`metadist train`)")
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    tags = {SCORE_METRIC_TAG: score.metric, SCORE_TAG: repr(score.value)} if score else {}
    version = client.create_model_version(name, model_uri, run_id=run_id, tags=tags, model_id=model_id).version
    holder, held = _holder(client, name, alias, score)
    moved = score is not None and (holder is None or score.beats(held))
    if moved:
        client.set_registered_model_alias(name, alias, version)
        log.info("registered %s version %s; alias %r moved to it (%s %.4g, holder %s)", name, version, alias,
                 score.metric if score else "", score.value if score else math.nan, holder)
    else:
        log.info("registered %s version %s; alias %r stays on version %s (%s)", name, version, alias, holder,
                 "no test score" if score is None else f"{score.metric} {score.value:.4g} does not beat {held}")
    return Registration(name, str(version), alias, moved, holder, held)


def _holder(client: Any, name: str, alias: str, score: Score | None) -> tuple[str | None, float | None]:
    """The version holding `alias` and its score on `score`'s metric (None when it has none)."""
    from mlflow.exceptions import MlflowException

    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None  # no such alias yet
    if score is None:
        return str(holder.version), None
    if holder.tags.get(SCORE_METRIC_TAG) == score.metric and SCORE_TAG in holder.tags:
        return str(holder.version), float(holder.tags[SCORE_TAG])
    if holder.run_id:
        try:
            value = client.get_run(holder.run_id).data.metrics.get(score.metric)
        except MlflowException:
            value = None
        return str(holder.version), value
    return str(holder.version), None
