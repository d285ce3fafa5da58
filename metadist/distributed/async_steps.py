"""Asynchronous outer steps (`distributed.mode: async`): the server applies whole steps as they arrive.

Each worker computes whole outer steps (all meta_batch tasks of step s) on the newest parameters it was given, and
the server applies each as it arrives. The staleness of an update is how many versions the server moved on while
it was computed; above `max_staleness` it is dropped and its step recomputed on fresh parameters
(`stale_policy: drop`) or applied scaled by 1/(1 + staleness - S) (`downweight`). Either way each of the run's
`train.steps` outer steps is applied exactly once.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass

import ray
from ray.exceptions import ObjectLostError, RayActorError

from metadist.config import JobConfig
from metadist.distributed.server_client import ServerClient
from metadist.distributed.stats import DistributedStats
from metadist.distributed.worker_group import POLL_INTERVAL_S, WorkerGroup
from metadist.training.loop import StepOutcome, is_log_step

log = logging.getLogger(__name__)


def staleness_weight(staleness: int, max_staleness: int, policy: str) -> float | None:
    """The weight an async update is applied with; None = dropped (its step is recomputed)."""
    if staleness <= max_staleness:
        return 1.0
    return None if policy == "drop" else 1.0 / (1 + staleness - max_staleness)


@dataclass(frozen=True)
class InFlightStep:
    """A whole step handed to a worker: which step, to whom, on which parameter version, and where its update is."""

    step: int
    worker_id: int
    version: int
    update_ref: ray.ObjectRef


class AsyncSchedule:
    def __init__(self, job: JobConfig, group: WorkerGroup, server: ServerClient, stats: DistributedStats) -> None:
        self.job, self.group, self.server, self.stats = job, group, server, stats

    def steps(self, start: int) -> Generator[StepOutcome, None, None]:
        config, train = self.job.distributed, self.job.train
        redo: deque[int] = deque()  # steps to compute again (their worker died, or their update was too stale)
        next_new = start  # steps below this were handed out (or applied before a resume)
        inflight: dict[ray.ObjectRef, InFlightStep] = {}  # keyed by the report's reference
        applied = start
        while applied < train.steps:
            self.group.poll()
            busy = {s.worker_id for s in inflight.values()}
            for slot in self.group.live_workers():
                if slot.worker_id in busy:
                    continue
                if redo:
                    step = redo.popleft()
                elif next_new < train.steps:
                    step, next_new = next_new, next_new + 1
                else:
                    break
                params = self.server.params
                report_ref, update_ref = slot.actor.compute.remote(
                    step, 0, train.meta_batch, params.version, params.box, is_log_step(step + 1, train)
                )
                inflight[report_ref] = InFlightStep(step, slot.worker_id, params.version, update_ref)
            if not inflight:
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_INTERVAL_S)
            for ref in ready:
                sent = inflight.pop(ref)
                try:
                    slice_report = ray.get(ref)
                except RayActorError as exc:
                    self.group.lost(sent.worker_id, exc)
                    self.stats.recomputed_tasks += train.meta_batch
                    redo.append(sent.step)
                    continue
                staleness = self.server.params.version - sent.version
                weight = staleness_weight(staleness, config.max_staleness, config.stale_policy)
                if weight is None:
                    self.stats.dropped += 1
                    self.stats.recomputed_tasks += train.meta_batch
                    redo.append(sent.step)
                    continue
                try:
                    report = self.server.apply(sent.step, weight, [sent.update_ref])
                except ObjectLostError as exc:
                    log.warning("step %d: its update was lost (%s); recomputing it", sent.step, exc)
                    redo.append(sent.step)
                    continue
                if report.duplicate:
                    continue
                if weight != 1.0:
                    self.stats.downweighted += 1
                applied += 1
                yield self.stats.outcome([slice_report], report, staleness)
