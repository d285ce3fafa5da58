"""What one task worker reserves in the cluster: its Ray resources, the torch threads it runs with, and why.

GPU ownership is explicit. `train.device: cuda` asks every worker for its GPU (or `gpus_per_worker` of one) whatever
the cluster holds when the job starts, so that an autoscaler adds GPU nodes for the waiting workers; `cpu` asks
for none; `auto` asks when the cluster has GPUs now or its autoscaler advertises node types that have them, and
otherwise takes CPU slots. The decision and its reason are logged when the job starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

from metadist.config import DistributedConfig, JobConfig, TrainConfig
from metadist.distributed.ray_internals import autoscaler_max_resources


@dataclass(frozen=True)
class ClusterGPUs:
    """GPUs the cluster has now, and the most its autoscaler could have (0: no autoscaler, or none with GPUs)."""

    now: float
    addable: float

    @classmethod
    def read(cls) -> ClusterGPUs:
        return cls(now=ray.cluster_resources().get("GPU", 0.0), addable=(autoscaler_max_resources() or {}).get("GPU", 0.0))


@dataclass(frozen=True)
class WorkerResources:
    num_cpus: float
    num_gpus: float
    threads: int
    reason: str = ""  # why this many GPUs, for the log

    def as_options(self) -> dict:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


def worker_resources(config: DistributedConfig, train: TrainConfig, gpus: ClusterGPUs) -> WorkerResources:
    """What each worker asks Ray for (see the module's docstring)."""
    cpus = config.cpus_per_worker or float(train.threads or 1)
    threads = train.threads or max(1, int(cpus))
    if config.gpus_per_worker is not None:
        num_gpus, reason = config.gpus_per_worker, f"distributed.gpus_per_worker = {config.gpus_per_worker:g}"
    elif train.device == "cpu":
        num_gpus, reason = 0.0, "train.device is 'cpu'"
    elif train.device.startswith("cuda"):
        num_gpus, reason = 1.0, f"train.device is {train.device!r}: one GPU each, whatever the cluster has now"
    elif gpus.now > 0:
        num_gpus, reason = 1.0, f"train.device 'auto' and the cluster has {gpus.now:g} GPU(s)"
    elif gpus.addable > 0:
        num_gpus, reason = 1.0, f"train.device 'auto' and the cluster's autoscaler can add GPU nodes (up to {gpus.addable:g} GPUs)"
    else:
        num_gpus, reason = 0.0, "train.device 'auto', and the cluster neither has GPUs nor advertises node types with them"
    return WorkerResources(num_cpus=cpus, num_gpus=num_gpus, threads=threads, reason=reason)


def job_bundles(job: JobConfig, gpus: ClusterGPUs) -> list[dict[str, float]]:
    """The placement-group bundles that hold all of one job at once: its driver first (the trainer: evaluation and
    checkpoints; the parameter server and reducers, which ask for no slot, run on its node), then one per task worker.
    A local job (workers: 0) is its driver alone, with train.threads CPU slots."""
    driver = {"CPU": float(job.train.threads or 1)}
    if job.distributed.workers == 0:
        return [driver]
    worker = worker_resources(job.distributed, job.train, gpus)
    bundle = {"CPU": worker.num_cpus} | ({"GPU": worker.num_gpus} if worker.num_gpus else {})
    return [driver] + [dict(bundle) for _ in range(job.distributed.workers)]
