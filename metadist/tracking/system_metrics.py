"""MLflow's system-metrics monitor for a run: CPU, memory, disk, network (and GPU) as `system/*` metrics, from the
driver and, under a node id of their own, from every process that trains for the run.

    system/cpu_utilization_percentage                   the driver (the process that owns the run)
    system/worker-0/system_memory_usage_megabytes ...   task worker 0 (metadist.distributed.worker)
    system/parameter-server/...                         the parameter server

The figures are MLflow's (mlflow.system_metrics): machine-wide CPU and memory, disk, network, and per GPU its
utilisation, memory and power when `nvidia-ml-py` is installed and NVML finds a GPU (AMD GPUs with `pyrsmi`).
Processes on one machine report the same machine-wide figures, each under its own node id.

MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false turns it off; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL (seconds, default 10)
sets how often it samples. Both are read in the driver and travel to the workers in the `SystemMetricsTarget`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

ENABLE_ENV = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"
INTERVAL_ENV = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"
DEFAULT_INTERVAL_S = 10.0  # MLflow's own default


@dataclass(frozen=True)
class SystemMetricsTarget:
    """Where and how often a process's monitor logs: the driver's run, read from its settings."""

    tracking_uri: str
    run_id: str
    sampling_interval_s: float = DEFAULT_INTERVAL_S
    enabled: bool = True

    @classmethod
    def from_env(cls, tracking_uri: str, run_id: str) -> SystemMetricsTarget:
        enabled = os.environ.get(ENABLE_ENV, "").strip().lower() not in ("false", "0")
        interval = os.environ.get(INTERVAL_ENV)
        return cls(tracking_uri, run_id, float(interval) if interval else DEFAULT_INTERVAL_S, enabled)


def start_system_metrics(target: SystemMetricsTarget | None, *, node_id: str | None = None,
                         resumed: bool = False) -> Any:
    """A started SystemMetricsMonitor logging into `target`'s run (as system/<node_id>/... when given); None when
    there is no target, it is disabled, or psutil (which MLflow's monitor needs) is missing. `finish()` stops it
    and flushes what it holds."""
    if target is None or not target.enabled:
        return None
    if importlib.util.find_spec("psutil") is None:
        log.debug("psutil not installed: no system metrics")
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # Its INFO lines (started, GPU metrics skipped, terminated) would reach the driver's terminal from every task
    # worker and the parameter server through Ray's log forwarding, on every start and restart.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(target.run_id, sampling_interval=target.sampling_interval_s, node_id=node_id,
                                   resume_logging=resumed, tracking_uri=target.tracking_uri)
    monitor.start()
    return monitor



class NodeMonitor:
    """The monitor of one process that trains for a run (a task worker, the parameter server), under its node id;
    started when the driver's run is known, restarted with a new target, stopped (and flushed) before the process
    ends. Its steps continue after those already in the run (a restarted server does not overwrite its own)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._monitor: Any = None

    def start(self, target: SystemMetricsTarget | None) -> None:
        self.stop()
        self._monitor = start_system_metrics(target, node_id=self.node_id, resumed=True)

    def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
