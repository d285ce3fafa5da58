"""MLflow tracking of training runs (and the logged few-shot model): the only package in metadist that imports mlflow.

>>> from metadist.tracking import open_tracker
>>> tracker = open_tracker(job.tracking, job_name=job.name)
>>> tracker.start(job); tracker.log_metrics({"loss_after": 0.4}, step=10); tracker.end("FINISHED")
"""

from metadist.tracking.mlflow_tracker import MlflowTracker, NullTracker, Tracker, TrackingError, open_tracker
from metadist.tracking.uri import resolve_tracking_uri

__all__ = ["MlflowTracker", "NullTracker", "Tracker", "TrackingError", "open_tracker", "resolve_tracking_uri"]
