"""Where a run is recorded: the tracking URI a job resolves to, and MLflow's process-wide URI set for a block.

`resolve_tracking_uri`: `tracking.uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///<cwd>/mlflow.db` — the same local
store MLflow 3 itself defaults to (its ./mlruns file store is in maintenance mode and refuses to open unless
MLFLOW_ALLOW_FILE_STORE=true), made absolute so a later `chdir` cannot split a run across two stores.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from metadist.config import TrackingConfig

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
LOCAL_STORE_NAME = "mlflow.db"  # MLflow 3's own default store name (mlflow.store.tracking.DEFAULT_TRACKING_URI)
# Model.log reads MLflow's process-wide tracking URI; swapping it is serialised across trackers.
_GLOBAL_URI_LOCK = threading.Lock()


def resolve_tracking_uri(config: TrackingConfig) -> str:
    """`config.uri`, else $MLFLOW_TRACKING_URI, else the local sqlite store `sqlite:///<cwd>/mlflow.db`."""
    if config.uri:
        return config.uri
    if os.environ.get(TRACKING_URI_ENV):
        return os.environ[TRACKING_URI_ENV]
    return "sqlite:///" + str(Path.cwd().resolve() / LOCAL_STORE_NAME)



@contextlib.contextmanager
def process_tracking_uri(uri: str) -> Iterator[None]:
    """Set MLflow's process-wide tracking URI for the block, then restore it (and $MLFLOW_TRACKING_URI) exactly."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as uri_utils

    with _GLOBAL_URI_LOCK:
        before_global = uri_utils._tracking_uri
        before_env = os.environ.get(TRACKING_URI_ENV)
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(before_global)  # type: ignore[arg-type]  # None: back to unset, as it was
            if before_env is None:
                os.environ.pop(TRACKING_URI_ENV, None)
            else:
                os.environ[TRACKING_URI_ENV] = before_env
