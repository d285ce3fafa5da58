"""The task workers of a job: starting them, folding in new ones as the cluster grows, replacing lost ones.

The group asks Ray for `workers` actors. Those the cluster can place start at once; the rest wait in Ray's
queue, which is also the demand the autoscaler scales on, and join the run as soon as nodes appear (`poll`).
A worker that dies (`ray.kill`, a crash, its node lost) is reported with `lost`: it leaves the group and a
replacement is asked for, which joins the same way, up to `distributed.worker_restarts` over the run.

Nothing here knows about steps or tasks: the trainer decides what each live worker computes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from metadist.config import JobConfig
from metadist.distributed.cluster import ClusterError
from metadist.distributed.resources import WorkerResources
from metadist.distributed.worker import TaskWorker
from metadist.tracking.system_metrics import SystemMetricsTarget

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.5  # how often a wait for workers to be placed looks again
# At shutdown, how long workers get to flush their last system metrics to MLflow before they are killed.
METRICS_FLUSH_TIMEOUT_S = 10.0


def worker_placement() -> Any:
    """Where a worker is placed: one per node where they fit ("SPREAD": a lost node costs fewer), or, in a job that
    runs inside a placement group that captures its children (a `metadist tune` trial), in that group's bundles,
    reserved with the trial so that trials waiting for workers can never hold each other's CPUs."""
    group = ray.util.get_current_placement_group()
    if group is None:
        return "SPREAD"
    return PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)


class WorkersExhausted(ClusterError):
    """More workers died than distributed.worker_restarts allows."""


@dataclass
class WorkerSlot:
    worker_id: int
    actor: Any  # ray.actor.ActorHandle of a TaskWorker
    ready_ref: object | None  # ObjectRef of info() until the worker is up
    info: dict | None = None
    requested_at_s: float = 0.0


class WorkerGroup:
    def __init__(self, job: JobConfig, spec: dict, resources: WorkerResources, worker_class: type = TaskWorker) -> None:
        """worker_class: TaskWorker, or a class with its constructor and methods (metadist.distributed.stand_in)."""
        config = job.distributed
        self.job = job
        self.spec = spec
        self.resources = resources
        self.target = config.workers
        self.min_workers = config.min_workers or config.workers
        self.restarts_allowed = config.worker_restarts  # -1: no limit
        self.start_timeout_s = config.start_timeout_s
        self.restarts = 0  # workers replaced so far
        self.live: dict[int, WorkerSlot] = {}
        self.pending: dict[int, WorkerSlot] = {}
        self._next_id = 0
        self._actor_class: Any = ray.remote(worker_class)
        self.system_metrics: SystemMetricsTarget | None = None  # the run each worker logs its system metrics into

    # -- membership ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Ask for all `workers`; return once `min_workers` are up (the others join later, see `poll`)."""
        for _ in range(self.target):
            self._spawn()
        self.wait_for(self.min_workers)

    def _spawn(self) -> None:
        worker_id = self._next_id
        self._next_id += 1
        actor = self._actor_class.options(
            **self.resources.as_options(),
            max_restarts=0,  # a dead worker is replaced by the group, which counts it and re-sends its tasks
            scheduling_strategy=worker_placement(),
        ).remote(self.job, self.spec, worker_id, self.resources.threads)
        self.pending[worker_id] = WorkerSlot(worker_id, actor, actor.info.remote(), requested_at_s=time.monotonic())
        if self.system_metrics is not None:
            actor.start_system_metrics.remote(self.system_metrics)  # runs once the actor is up

    def record_system_metrics(self, target: SystemMetricsTarget | None) -> None:
        """Every worker, and every one that joins later, logs its system metrics into `target`'s run."""
        self.system_metrics = target
        for slot in [*self.live.values(), *self.pending.values()]:
            slot.actor.start_system_metrics.remote(target)

    def poll(self, timeout_s: float = 0.0) -> list[int]:
        """Fold in workers that came up since the last call (waiting up to timeout_s for one); their ids."""
        if not self.pending:
            return []
        refs = {slot.ready_ref: slot for slot in self.pending.values()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        if not ready and timeout_s > 0:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=0)
        joined = []
        for ref in ready:
            slot = refs[ref]
            del self.pending[slot.worker_id]
            try:
                slot.info = ray.get(ref)
            except RayActorError as exc:
                if getattr(exc, "actor_init_failed", False):
                    raise ClusterError(f"task worker {slot.worker_id} failed to start: {exc}") from exc
                self.lost(slot.worker_id, exc)
                continue
            slot.ready_ref = None
            self.live[slot.worker_id] = slot
            joined.append(slot.worker_id)
            log.info("task worker %d up on node %s (%s); %d live", slot.worker_id, slot.info["node_id"][:8],
                     slot.info["device"], len(self.live))
        return joined

    def wait_for(self, count: int) -> None:
        """Block until at least `count` workers are live, or fail after distributed.start_timeout_s."""
        deadline = time.monotonic() + self.start_timeout_s
        while len(self.live) < count:
            if not self.pending:
                raise WorkersExhausted(f"only {len(self.live)} task workers left and none can be asked for "
                                       f"(distributed.worker_restarts = {self.restarts_allowed})")
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"only {len(self.live)} of the {count} task workers needed (distributed.min_workers) came up within "
                    f"distributed.start_timeout_s = {self.start_timeout_s:.0f} s; each asks for "
                    f"{self.resources.as_options()}, the cluster has {ray.available_resources()} free"
                )
            self.poll(timeout_s=POLL_INTERVAL_S)

    def live_workers(self) -> list[WorkerSlot]:
        """The live workers, oldest first; waits (start_timeout_s) for one when none is."""
        if not self.live:
            self.wait_for(1)
        return [self.live[k] for k in sorted(self.live)]

    def where(self, worker_id: int) -> str:
        """'task worker N on node ABCDEF12' for messages."""
        slot = self.live.get(worker_id) or self.pending.get(worker_id)
        node = (slot.info or {}).get("node_id", "?")[:8] if slot else "?"
        return f"task worker {worker_id} on node {node}"

    def replace(self, worker_id: int, exc: BaseException) -> None:
        """Worker `worker_id` is alive but not to be trusted (it raised, or hung past its deadline): end it, and
        replace it as if it had died. Its calls still queued are abandoned with it."""
        slot = self.live.get(worker_id) or self.pending.get(worker_id)
        if slot is not None:
            ray.kill(slot.actor, no_restart=True)
        self.lost(worker_id, exc)

    def lost(self, worker_id: int, exc: BaseException) -> None:
        """Worker `worker_id` died: drop it and ask for a replacement (which joins when placed)."""
        slot = self.live.pop(worker_id, None) or self.pending.pop(worker_id, None)
        if slot is None:
            return  # already handled (several of its tasks failed)
        if self.restarts_allowed >= 0 and self.restarts >= self.restarts_allowed:
            raise WorkersExhausted(
                f"task worker {worker_id} died and distributed.worker_restarts = {self.restarts_allowed} "
                f"replacements are used up: {exc}"
            ) from exc
        self.restarts += 1
        log.warning("task worker %d lost (%s: %s); asking for a replacement (%d so far)", worker_id, type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "", self.restarts)
        self._spawn()

    def shutdown(self) -> None:
        if self.system_metrics is not None and self.live:  # their last samples, before the processes go
            ray.wait([slot.actor.stop_system_metrics.remote() for slot in self.live.values()], num_returns=len(self.live),
                     timeout=METRICS_FLUSH_TIMEOUT_S)
        for slot in [*self.live.values(), *self.pending.values()]:
            ray.kill(slot.actor)
        self.live.clear()
        self.pending.clear()
