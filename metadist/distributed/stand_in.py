"""A task worker whose compute is a stand-in of fixed duration: for measuring the distributed path itself.

`stand_in_worker(compute_s)` is a drop-in for TaskWorker (`DistributedSteps(job, worker_class=...)`): it fetches
each parameter version as a real worker does, then, instead of sampling and adapting, waits `compute_s` and returns
an update of the real size (the job's meta-parameters, as a flat float32 buffer) with a real report. Everything
else — dispatch, deadlines, reducers, the parameter server, the outer step — is the real code, so the time a step
takes beyond `compute_s` is the overhead of the distributed path (bench/distributed_scaling.py).
"""

from __future__ import annotations

import os
import time

import numpy as np
import ray

from metadist.algorithms.functional import tensor_bytes
from metadist.config import JobConfig
from metadist.core import ModelSpec, build
from metadist.distributed.flat import FlatUpdate, ParamLayout
from metadist.distributed.worker import SliceReport


class StandInWorker:
    compute_s = 0.25

    def __init__(self, job: JobConfig, spec: dict, worker_id: int, threads: int) -> None:
        self.worker_id = worker_id
        _, learner = build(job, ModelSpec.from_dict(spec))
        layout = ParamLayout.of(learner.init_meta_params())
        self.buffer = np.zeros(layout.numel, np.float32)  # an update of the real size
        self.version: int | None = None

    def info(self) -> dict:
        ctx = ray.get_runtime_context()
        return {"worker_id": self.worker_id, "pid": os.getpid(), "node_id": ctx.get_node_id(), "device": "cpu",
                "gpu_ids": [], "cuda_visible_devices": None}

    @ray.method(num_returns=2)
    def compute(self, step: int, lo: int, hi: int, version: int, params_box: list, with_before: bool,
                prefetch: tuple[int, int, int] | None = None):
        fetched = 0
        if version != self.version:  # the real fetch of a new version
            fetched, self.version = tensor_bytes(ray.get(params_box[0])), version
        time.sleep(self.compute_s)
        update = FlatUpdate("gradient", self.buffer, hi - lo, {"loss_after": 0.0})
        report = SliceReport(
            worker_id=self.worker_id, step=step, lo=lo, hi=hi, version=version, num_tasks=hi - lo, metrics=dict(update.metrics),
            before=None, compute_s=self.compute_s, sample_s=0.0, fetched_bytes=fetched, prefetched=True,
            update_bytes=update.nbytes,
        )
        return report, update

    def start_system_metrics(self, target) -> None:
        """A stand-in logs no system metrics (TaskWorker's interface)."""

    def stop_system_metrics(self) -> None:
        pass


def stand_in_worker(compute_s: float) -> type:
    """A StandInWorker class whose compute takes `compute_s` seconds."""
    return type("StandInWorker", (StandInWorker,), {"compute_s": compute_s})
