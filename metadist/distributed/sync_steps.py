"""Synchronous outer steps (`distributed.mode: sync`): every step waits for its whole meta-batch.

One outer step: cut the meta-batch's task indices into `slices` contiguous ranges → hand them round-robin to the
live workers → gather the reports; a dead worker's slices go to another worker (recomputed, same episodes) → the
server sums the slices' updates in slice order and applies the step once → the next version of the parameters.
Episodes are a function of (seed, step, task index) and the sum is taken in slice order whoever computed a slice,
so the run does not depend on how many workers were up, or which died: for a given slice count it is the same to
the bit, and it equals the local trainer's up to float summation order.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Generator
from dataclasses import dataclass

import ray
from ray.exceptions import ObjectLostError, RayActorError

from metadist.config import JobConfig
from metadist.distributed.failures import MAX_STEP_ATTEMPTS, UpdatesLost
from metadist.distributed.server_client import ServerClient
from metadist.distributed.stats import DistributedStats
from metadist.distributed.worker import SliceReport
from metadist.distributed.worker_group import WorkerGroup
from metadist.training.loop import StepOutcome, is_log_step

log = logging.getLogger(__name__)


def slice_bounds(meta_batch: int, slices: int) -> list[tuple[int, int]]:
    """`slices` contiguous task ranges covering range(meta_batch), sizes differing by at most one."""
    return [(j * meta_batch // slices, (j + 1) * meta_batch // slices) for j in range(slices)]


@dataclass(frozen=True)
class InFlightSlice:
    """A slice handed to a worker: which one, to whom, and where its update will be."""

    index: int
    worker_id: int
    update_ref: ray.ObjectRef


class SyncSchedule:
    def __init__(self, job: JobConfig, group: WorkerGroup, server: ServerClient, stats: DistributedStats) -> None:
        self.job, self.group, self.server, self.stats = job, group, server, stats
        self.bounds = slice_bounds(job.train.meta_batch, job.distributed.slice_count)

    def steps(self, start: int) -> Generator[StepOutcome, None, None]:
        train = self.job.train
        for step in range(start, train.steps):
            self.group.poll()  # workers placed since the last step join now
            for _attempt in range(MAX_STEP_ATTEMPTS):
                reports, update_refs = self.compute_slices(step, self.bounds, with_before=is_log_step(step + 1, train))
                try:
                    report = self.server.apply(step, 1.0, update_refs)
                    break
                except ObjectLostError as exc:  # an update object went down with its node: recompute the step
                    log.warning("step %d: an update was lost (%s); recomputing the step", step, exc)
                    self.stats.recomputed_tasks += train.meta_batch
            else:
                raise UpdatesLost(f"step {step}: updates lost {MAX_STEP_ATTEMPTS} times in a row; giving up")
            yield self.stats.outcome(reports, report, staleness=0)

    def compute_slices(self, step: int, bounds: list[tuple[int, int]], with_before: bool) -> tuple[list[SliceReport], list]:
        """Every slice of `step` computed on the current parameters, by whichever workers stay alive."""
        todo = deque(range(len(bounds)))
        inflight: dict[ray.ObjectRef, InFlightSlice] = {}  # keyed by the report's reference
        done: dict[int, tuple[SliceReport, ray.ObjectRef]] = {}
        first_round = True
        last_step = step + 1 >= self.job.train.steps
        params = self.server.params
        while todo or inflight:
            if todo:
                live = self.group.live_workers()
                load = Counter(s.worker_id for s in inflight.values())
                while todo:
                    j = todo.popleft()
                    if first_round:  # the same worker gets the same slice step after step: its prefetch guess holds
                        slot = live[j % len(live)]
                    else:  # a recomputed slice goes to the least busy live worker
                        slot = min(live, key=lambda s: load[s.worker_id])
                    load[slot.worker_id] += 1
                    lo, hi = bounds[j]
                    prefetch = None if last_step else (step + 1, lo, hi)
                    report_ref, update_ref = slot.actor.compute.remote(step, lo, hi, params.version, params.box, with_before, prefetch)
                    inflight[report_ref] = InFlightSlice(j, slot.worker_id, update_ref)
                first_round = False
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                sent = inflight.pop(ref)
                try:
                    done[sent.index] = (ray.get(ref), sent.update_ref)
                except RayActorError as exc:
                    self.group.lost(sent.worker_id, exc)
                    self.stats.recomputed_tasks += bounds[sent.index][1] - bounds[sent.index][0]
                    todo.append(sent.index)
        return [done[j][0] for j in range(len(bounds))], [done[j][1] for j in range(len(bounds))]
