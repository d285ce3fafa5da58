"""MLflow's system-metrics monitor for a run: CPU, memory, disk, network (and GPU) as `system/*` metrics."""

from __future__ import annotations

import importlib.util
import logging
import os

log = logging.getLogger(__name__)


def start_system_metrics(run_id: str, tracking_uri: str, *, resumed: bool):
    """CPU/memory/disk/network (and GPU) usage as `system/*` metrics, every 10 s, when psutil is installed.

    MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false turns it off; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL tunes it.
    """
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower() in ("false", "0"):
        return None
    if importlib.util.find_spec("psutil") is None:  # MLflow's monitor needs it
        log.debug("psutil not installed: no system metrics")
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=resumed, tracking_uri=tracking_uri)
    monitor.start()
    return monitor
