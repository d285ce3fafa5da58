"""The distributed step source and trainer: `metadist train JOB.yaml --workers N`.

`DistributedSteps` is the loop's step source (metadist.training.loop) made of a Ray connection, a parameter-server
actor (server_client), a group of task workers (worker_group) and a schedule: synchronous (sync_steps) or
asynchronous (async_steps). Failures are handled as metadist.distributed.failures says.
"""

from __future__ import annotations

import logging
from collections.abc import Generator

import ray
import torch

from metadist.algorithms.functional import Params
from metadist.algorithms.outer import OuterState
from metadist.config import JobConfig
from metadist.core import LoopState, build, make_sampler, model_spec, resolve_device
from metadist.core.runs import absolute
from metadist.distributed.async_steps import AsyncSchedule
from metadist.distributed.cluster import Connection, connect
from metadist.distributed.reducer import start_reducers
from metadist.distributed.resources import ClusterGPUs, worker_resources
from metadist.distributed.server_client import ServerClient
from metadist.distributed.stats import DistributedStats
from metadist.distributed.sync_steps import SyncSchedule
from metadist.distributed.worker import TaskWorker
from metadist.distributed.worker_group import WorkerGroup
from metadist.errors import ConfigError
from metadist.runtime import configure_process
from metadist.tracking.system_metrics import SystemMetricsTarget
from metadist.training.loop import StepOutcome, StepSource, Trainer

log = logging.getLogger(__name__)


class DistributedSteps(StepSource):
    """Outer steps computed by Ray task workers and applied by the parameter-server actor."""

    def __init__(self, job: JobConfig, *, progress: bool = True, worker_class: type = TaskWorker) -> None:
        """worker_class: what each worker actor runs; TaskWorker, or a stand-in (metadist.distributed.stand_in)."""
        if job.distributed.workers < 1:
            raise ConfigError("distributed.workers must be at least 1 for the distributed trainer (0 trains locally)")
        configure_process(job.train.threads, job.retains_freed_memory())  # the driver's own work: held-out evaluation
        self.job = job
        # The driver only evaluates: on a GPU when it has one, else on its CPU. Its node (a CPU head, say) need not
        # have what the workers have; train.device is about the workers (metadist.distributed.resources).
        self.device = resolve_device("cpu" if job.train.device == "cpu" or not torch.cuda.is_available() else job.train.device)
        self.spec = model_spec(job, make_sampler(job, "train", progress=progress))
        self.model, self.learner = build(job, self.spec)
        self.model.to(self.device)
        # Named in messages about a lost server: where `--resume` finds the run's newest checkpoint.
        self.checkpoint_directory = absolute(job.checkpoint_dir())
        self.stats = DistributedStats()
        self.group: WorkerGroup | None = None
        self.server: ServerClient | None = None
        self.connection: Connection = connect(job.distributed)
        try:
            self.resources = worker_resources(job.distributed, job.train, ClusterGPUs.read())
            log.info("each task worker asks for %s: %s", self.resources.as_options(), self.resources.reason)
            self.server = ServerClient(job, self.spec, self.stats, self.checkpoint_directory)
            self.group = WorkerGroup(job, self.spec.to_dict(), self.resources, worker_class)  # asks in start()
        except BaseException:
            self.close()
            raise
        self.reducers: list = []
        self.schedule: SyncSchedule | AsyncSchedule
        if job.distributed.mode == "sync":
            self.reducers, nodes = start_reducers(job.distributed.reducers)
            self.schedule = SyncSchedule(job, self.group, self.server, self.stats, self.reducers, nodes)
        else:
            self.schedule = AsyncSchedule(job, self.group, self.server, self.stats)

    def start(self) -> None:
        assert self.group is not None
        self.group.start()
        log.info("%d task workers up (%s each), %s mode", len(self.group.live), self.resources.as_options(), self.job.distributed.mode)

    def steps(self, start: int) -> Generator[StepOutcome, None, None]:
        return self.schedule.steps(start)

    def record_system_metrics(self, target: SystemMetricsTarget | None) -> None:
        """Each task worker and the parameter server log their system metrics into the run, under their node ids."""
        if self.group is not None:
            self.group.record_system_metrics(target)
        if self.server is not None:
            self.server.record_system_metrics(target)

    def log_extras(self) -> dict[str, float]:
        live = len(self.group.live) if self.group else 0
        return self.stats.close(workers=live, restarts=self.worker_restarts)

    # -- state -------------------------------------------------------------------------------------------------------
    def meta_params(self) -> Params:
        assert self.server is not None
        return {k: v.detach().clone().to(self.device) for k, v in self.server.meta_params().items()}

    def outer_state(self) -> OuterState:
        assert self.server is not None
        return self.server.state()

    def load_outer_state(self, state: OuterState) -> None:
        assert self.server is not None
        self.server.load_state(state)

    def save_checkpoint(self, step: int, loop: LoopState, directory: str, keep: int) -> str:
        """The parameter server writes it (it holds the optimizer state): only the loop's state travels to it. The
        run's folder is absolute (metadist.core.runs), since the server's working directory is not the driver's."""
        assert self.server is not None
        return self.server.save(step, loop, directory)

    @property
    def applied_steps(self) -> int:
        return self.server.step_count if self.server else 0

    @property
    def skipped_updates(self) -> int:
        return self.server.skipped if self.server else 0

    @property
    def worker_restarts(self) -> int:
        return self.group.restarts if self.group else 0

    def close(self) -> None:
        """Release the workers and the server (keeping the final parameters here); stop a Ray started here."""
        if self.group is not None:
            self.group.shutdown()
        if self.server is not None:
            self.server.close()
        for reducer in getattr(self, "reducers", []):
            ray.kill(reducer)
        self.connection.close()


class DistributedTrainer(Trainer):
    """`Trainer` over `DistributedSteps`: task workers and a parameter server on a Ray cluster.

    >>> trainer = DistributedTrainer(job)          # joins or starts Ray, starts the parameter server
    >>> result = trainer.run()                     # starts the workers, trains, evaluates, releases the actors
    """

    source: DistributedSteps

    def __init__(self, job: JobConfig, *, resume: str | bool = False, progress: bool = True) -> None:
        source = DistributedSteps(job, progress=progress)
        try:
            super().__init__(job, source, resume=resume, progress=progress)
        except BaseException:
            source.close()
            raise

    @property
    def group(self) -> WorkerGroup | None:
        return self.source.group

    @property
    def connection(self) -> Connection:
        return self.source.connection

    @property
    def worker_restarts(self) -> int:
        return self.source.worker_restarts

