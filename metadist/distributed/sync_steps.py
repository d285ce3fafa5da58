"""Synchronous outer steps (`distributed.mode: sync`): every step waits for its whole meta-batch.

One outer step: cut the meta-batch's task indices into `slices` contiguous ranges → hand them out from a queue, one
at a time per worker, so a slow worker does less (each worker first gets the slice it had last step, which it
sampled ahead, then slices whose reducer is on its node) → gather the reports; a dead, raising or hung worker's
slice goes to another worker (recomputed, same episodes) → each reducer sums its fixed group of slices in slice
order, the server sums the reducers' partials in group order and applies the step once → the next version.
Episodes are a function of (seed, step, task index) and the sum is taken in a fixed order whoever computed a slice,
so the run does not depend on how many workers were up, or which died: for a given slice and reducer count it is
the same to the bit, and it equals the local trainer's up to float summation order. A lost parameter server is restarted from
the run's last checkpoint and the steps since are computed again: the same bits again.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

from metadist.config import JobConfig
from metadist.distributed.failures import MAX_STEP_ATTEMPTS, ParameterServerLost, UpdatesLost, WorkerFailures
from metadist.distributed.flat import group_bounds
from metadist.distributed.server_client import ServerClient
from metadist.distributed.stats import DistributedStats
from metadist.distributed.worker import SliceReport
from metadist.distributed.worker_group import POLL_INTERVAL_S, WorkerGroup
from metadist.training.loop import StepOutcome, is_log_step

log = logging.getLogger(__name__)


def slice_bounds(meta_batch: int, slices: int) -> list[tuple[int, int]]:
    """`slices` contiguous task ranges covering range(meta_batch), sizes differing by at most one."""
    return [(j * meta_batch // slices, (j + 1) * meta_batch // slices) for j in range(slices)]


@dataclass(frozen=True)
class InFlightSlice:
    """A slice handed to a worker: which one, to whom, when, and where its update will be."""

    index: int
    worker_id: int
    sent_at: float
    update_ref: ray.ObjectRef


class SyncSchedule:
    def __init__(self, job: JobConfig, group: WorkerGroup, server: ServerClient, stats: DistributedStats,
                 reducers: list[Any], reducer_nodes: list[str]) -> None:
        self.job, self.group, self.server, self.stats = job, group, server, stats
        self.bounds = slice_bounds(job.train.meta_batch, job.distributed.slice_count)
        self.reducers = reducers
        self.groups = group_bounds(len(self.bounds), len(reducers))
        self.slice_node = {j: reducer_nodes[g] for g, members in enumerate(self.groups) for j in members}
        self.failures = WorkerFailures(job.distributed, group, stats)
        self.home: dict[int, int] = {}  # slice → the worker that computed it last (and sampled it ahead)
        self._partials: dict[int, ray.ObjectRef] = {}

    def steps(self, start: int) -> Generator[StepOutcome, None, None]:
        for step in range(start, self.job.train.steps):
            yield self._surviving_server_loss(step)

    def _surviving_server_loss(self, step: int) -> StepOutcome:
        """Step `step`; if the server is lost, restart it from the last checkpoint and compute the steps since."""
        while True:
            try:
                return self._step(step)
            except ParameterServerLost as exc:
                resume = self.server.restart(exc)
                self.stats.recomputed_tasks += (step - resume) * self.job.train.meta_batch
                for earlier in range(resume, step):
                    self._surviving_server_loss(earlier)

    def _step(self, step: int) -> StepOutcome:
        train = self.job.train
        self.group.poll()  # workers placed since the last step join now
        for _attempt in range(MAX_STEP_ATTEMPTS):
            reports, update_refs = self.compute_slices(step, self.bounds, with_before=is_log_step(step + 1, train))
            try:
                report = self.server.apply(step, 1.0, [self._partial(g, update_refs, reports) for g in range(len(self.groups))])
                break
            except ObjectLostError as exc:  # an update object went down with its node: recompute the step
                log.warning("step %d: an update was lost (%s); recomputing the step", step, exc)
                self.stats.recomputed_tasks += train.meta_batch
        else:
            raise UpdatesLost(f"step {step}: updates lost {MAX_STEP_ATTEMPTS} times in a row; giving up")
        return self.stats.outcome(reports, report, staleness=0)

    def compute_slices(self, step: int, bounds: list[tuple[int, int]], with_before: bool) -> tuple[list[SliceReport], list]:
        """Every slice of `step` computed on the current parameters, by whichever workers stay alive and well."""
        queue = deque(range(len(bounds)))
        inflight: dict[ray.ObjectRef, InFlightSlice] = {}  # keyed by the report's reference
        done: dict[int, tuple[SliceReport, ray.ObjectRef]] = {}
        last_step = step + 1 >= self.job.train.steps
        params = self.server.params
        self._partials = {}  # group → its reducer's sum, submitted once the group's slices are all in
        while queue or inflight:
            busy = Counter(s.worker_id for s in inflight.values())
            for slot in self.group.live_workers() if queue else []:
                if busy[slot.worker_id] or not queue:
                    continue
                # Its own slice from last step first (sampled ahead), then one its node's reducer sums, else the next.
                node = (slot.info or {}).get("node_id")
                j = next((j for j in queue if self.home.get(j) == slot.worker_id),
                         next((j for j in queue if self.slice_node.get(j) == node), queue[0]))
                queue.remove(j)
                lo, hi = bounds[j]
                prefetch = None if last_step else (step + 1, lo, hi)
                report_ref, update_ref = slot.actor.compute.remote(step, lo, hi, params.version, params.box, with_before, prefetch)
                inflight[report_ref] = InFlightSlice(j, slot.worker_id, time.monotonic(), update_ref)
                busy[slot.worker_id] += 1
                self.home[j] = slot.worker_id
            # With slices still to hand out, react to the first worker free; otherwise wait for them all at once.
            ready, _ = ray.wait(list(inflight), num_returns=1 if queue else len(inflight), timeout=POLL_INTERVAL_S)
            for ref in ready:
                sent = inflight.pop(ref)
                try:
                    done[sent.index] = (ray.get(ref), sent.update_ref)
                    self.failures.finished(sent)
                    self._reduce_finished_groups(done)
                except RayActorError as exc:  # the worker died with the slice
                    self.group.lost(sent.worker_id, exc)
                    self._requeue(queue, sent)
                except RayTaskError as exc:  # the worker raised: replace it, retry the slice (bounded)
                    self.failures.raised(sent, (step, sent.index), f"step {step}, tasks {bounds[sent.index]}", exc)
                    self._requeue(queue, sent)
            for late in self.failures.expired(inflight, f"step {step}"):
                self._requeue(queue, late)
        return [done[j][0] for j in range(len(bounds))], [done[j][1] for j in range(len(bounds))]

    def _reduce_finished_groups(self, done: dict[int, tuple[SliceReport, ray.ObjectRef]]) -> None:
        """Start the sum of every group whose slices are all in, while the other groups' slices are still computed."""
        for g, members in enumerate(self.groups):
            if g not in self._partials and all(j in done for j in members):
                self._partial(g, {j: done[j][1] for j in members}, {j: done[j][0] for j in members})

    def _partial(self, g: int, update_refs, reports) -> ray.ObjectRef:
        """Group g's updates summed by its reducer, in slice order (a group of one needs no sum); once per step."""
        if g not in self._partials:
            members = self.groups[g]
            refs = [update_refs[j] for j in members]
            self._partials[g] = refs[0] if len(refs) == 1 else self.reducers[g].sum.remote(*refs)
            self.stats.reducer_bytes.append(sum(reports[j].update_bytes for j in members) if len(refs) > 1 else 0)
        return self._partials[g]

    def _requeue(self, queue: deque[int], sent: InFlightSlice) -> None:
        lo, hi = self.bounds[sent.index]
        self.stats.recomputed_tasks += hi - lo
        self.home.pop(sent.index, None)
        queue.appendleft(sent.index)
