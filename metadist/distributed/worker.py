"""The task worker: a Ray actor that owns a GPU (or CPU slots) and computes updates for slices of meta-batches.

A thin shell around the learner's step function. It builds its sampler, model and learner from the job exactly as
the local trainer does (metadist.core), keeps the newest meta-parameters it was sent, and for each call
samples its task range (seed, step, indices) from its own shard streams, adapts to all of them in one vmapped
`learner.compute_update`, and returns the summed Update plus a small report:

    report_ref, update_ref = worker.compute.remote(step, lo, hi, version, [params_ref], with_before, prefetch)

Two return objects: the driver reads only the report (metrics, timings; a dead worker raises here), and hands
update_ref straight to the parameter server, so update tensors go worker → server without passing the driver.
Parameters arrive as an object-store reference wrapped in a list (so Ray does not resolve it on every call); the
worker fetches it only when `version` differs from the one it holds: once per version.

Its CPU, memory, disk, network and GPU use go into the driver's MLflow run as system/worker-<id>/... (MLflow's own
monitor, metadist.tracking.system_metrics), from `start_system_metrics` until `stop_system_metrics`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import ray
import torch

from metadist.algorithms.functional import Params, tensor_bytes
from metadist.config import JobConfig
from metadist.core import ModelSpec, autocast, build, make_sampler, warn_if_slow_precision
from metadist.data import Lookahead
from metadist.distributed.flat import FlatUpdate, ParamLayout
from metadist.runtime import configure_process
from metadist.tracking.system_metrics import NodeMonitor, SystemMetricsTarget


@dataclass(frozen=True)
class SliceReport:
    """What the driver learns about one computed slice; the update tensors travel separately."""

    worker_id: int
    step: int
    lo: int
    hi: int
    version: int  # the parameter version the update was computed on
    num_tasks: int
    metrics: dict[str, float]  # Update.metrics: sums over the slice's tasks
    before: dict[str, float] | None  # before-adaptation metric sums, when asked for
    compute_s: float  # adaptation and outer gradient
    sample_s: float  # waiting for episodes (0 when prefetched in time)
    fetched_bytes: int  # meta-parameters fetched from the object store for this call (0: cached version)
    prefetched: bool  # its episodes were sampled ahead, while the previous step was being applied
    update_bytes: int  # size of the returned update tensors
    # Where it ran: gpus (held), on_cuda (0 or 1). Its CPU, memory and GPU use are MLflow's system metrics.
    placement: dict[str, float] = field(default_factory=dict)


class TaskWorker:
    """Created as a Ray actor by WorkerGroup; `worker_id` names it in metrics and logs."""

    def __init__(self, job: JobConfig, spec: dict, worker_id: int, threads: int) -> None:
        configure_process(threads, job.retains_freed_memory())
        self.worker_id = worker_id
        self.job = job
        # Ray sets CUDA_VISIBLE_DEVICES to the GPUs this actor owns; without any it runs on the CPU.
        self.gpu_ids = [str(i) for i in ray.get_gpu_ids()]
        self.device = worker_device(job.train.device, self.gpu_ids, torch.cuda.is_available())
        self.precision = job.train.precision  # autocast while adapting, and the dtype updates travel in
        warn_if_slow_precision(self.precision, self.device)
        self.sampler = make_sampler(job, "train", progress=False)
        self.model, self.learner = build(job, ModelSpec.from_dict(spec))
        self.model.to(self.device)
        self.layout = ParamLayout.of(self.learner.init_meta_params())
        self.version: int | None = None
        self.params: Params = {}  # of version self.version; none before the first call
        # Keyed by (step, lo, hi): a worker holding several slices of a step keeps a guess for each of them.
        self._lookahead: Lookahead[tuple[int, int, int], object] = Lookahead(lambda key: self._sample(*key))
        self.monitor = NodeMonitor(f"worker-{worker_id}")

    def info(self) -> dict:
        """Where this worker runs; the driver waits on it to know the actor is placed and built."""
        ctx = ray.get_runtime_context()
        return {"worker_id": self.worker_id, "pid": os.getpid(), "node_id": ctx.get_node_id(), "device": str(self.device),
                "gpu_ids": self.gpu_ids, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "threads": torch.get_num_threads()}

    @ray.method(num_returns=2)
    def compute(self, step: int, lo: int, hi: int, version: int, params_box: list, with_before: bool,
                prefetch: tuple[int, int, int] | None = None):
        """The summed update of tasks lo..hi-1 of outer step `step`, computed on parameter version `version`."""
        fetched = 0
        if version != self.version:
            cpu_params = ray.get(params_box[0])
            self.params = {k: v.to(self.device) for k, v in cpu_params.items()}
            self.version, fetched = version, tensor_bytes(cpu_params)
        start = time.perf_counter()
        prefetched = self._lookahead.has((step, lo, hi))
        batch = self._lookahead.take((step, lo, hi))
        sampled = time.perf_counter()
        self._lookahead.drop(lambda key: key[0] <= step)  # guesses for this step or earlier will not be asked for
        if prefetch is not None:  # sample the next call's tasks while the server applies this step
            self._lookahead.ahead(prefetch)
        with autocast(self.precision, self.device):
            update = self.learner.compute_update(self.params, batch)
            before = self.learner.before_adaptation_sums(self.params, batch) if with_before else None
        flat = FlatUpdate.of(update, self.layout, self.precision)  # one contiguous buffer: through the object store without a copy
        done = time.perf_counter()
        report = SliceReport(
            worker_id=self.worker_id, step=step, lo=lo, hi=hi, version=version, num_tasks=update.num_tasks,
            metrics=dict(update.metrics), before=before, compute_s=done - sampled, sample_s=sampled - start,
            fetched_bytes=fetched, prefetched=prefetched, update_bytes=flat.nbytes,
            placement={"gpus": float(len(self.gpu_ids)), "on_cuda": float(self.device.type == "cuda")},
        )
        return report, flat

    def start_system_metrics(self, target: SystemMetricsTarget | None) -> None:
        """Log this process's system metrics into the driver's run, as system/worker-<id>/..."""
        self.monitor.start(target)

    def stop_system_metrics(self) -> None:
        self.monitor.stop()

    def _sample(self, step: int, lo: int, hi: int):
        return self.sampler.sample(step, range(lo, hi)).to(self.device)


def worker_device(configured: str, gpu_ids: list[str], cuda_available: bool) -> torch.device:
    """The device a worker trains on. Ray sets CUDA_VISIBLE_DEVICES to the GPUs it gave the actor, so the worker's own
    GPU is always cuda:0; without one it trains on the CPU. A worker told to use CUDA that cannot fails here, at
    start, with a message that says why (the driver reports it as the worker failing to start)."""
    if configured == "cpu":
        return torch.device("cpu")
    if gpu_ids and cuda_available:
        return torch.device("cuda", 0)
    if configured.startswith("cuda"):
        why = (f"Ray gave it GPU(s) {', '.join(gpu_ids)} but this process's torch sees no CUDA device "
               f"(a CPU build of torch, or no driver on the node)" if gpu_ids else "Ray gave it no GPU")
        raise RuntimeError(f"train.device is {configured!r}, but {why}")
    return torch.device("cpu")

