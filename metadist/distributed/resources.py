"""What one task worker reserves in the cluster: its Ray resources and the torch threads it runs with."""

from __future__ import annotations

from dataclasses import dataclass

import ray

from metadist.config import DistributedConfig, TrainConfig


@dataclass(frozen=True)
class WorkerResources:
    num_cpus: float
    num_gpus: float
    threads: int

    def as_options(self) -> dict:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


def worker_resources(config: DistributedConfig, train: TrainConfig) -> WorkerResources:
    """`gpus_per_worker` None = one GPU each when the cluster has any (and the job may use CUDA), else none."""
    gpus = config.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 and train.device != "cpu" else 0.0
    cpus = config.cpus_per_worker or float(train.threads or 1)
    threads = train.threads or max(1, int(cpus))
    return WorkerResources(num_cpus=cpus, num_gpus=gpus, threads=threads)
