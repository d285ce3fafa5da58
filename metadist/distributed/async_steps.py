"""Asynchronous outer steps (`distributed.mode: async`): the server applies whole steps as they arrive.

Each worker computes whole outer steps (all meta_batch tasks of step s) on the newest parameters it was given, and
the server applies each as it arrives. The staleness of an update is how many versions the server moved on while
it was computed; above `max_staleness` it is dropped and its step recomputed on fresh parameters
(`stale_policy: drop`) or applied scaled by 1/(1 + staleness - S) (`downweight`). Either way each of the run's
`train.steps` outer steps is applied exactly once. Staleness is enforced when steps are handed out too (S =
max_staleness, by default workers - 1; `DispatchGate`): with W workers each step normally arrives W - 1 versions
behind, so a free worker gets a step at once unless the oldest in flight is S versions behind *and* has already run
as long as a typical step, a straggler that a new step could overtake and push past S. Updates therefore arrive
too stale only when a worker is slower than the others by more than a step, dies, or hangs. Workers that die,
raise or hang are handled as in sync mode
(metadist.distributed.failures); a lost server is restarted from the last checkpoint and the steps applied since
are computed again, without being counted twice.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

from metadist.config import JobConfig
from metadist.distributed.failures import ParameterServerLost, WorkerFailures
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


# How many recent step durations make the "typical" one (their median) that DispatchGate compares against.
RECENT_STEPS = 32


class DispatchGate:
    """Whether one more step may be handed out without pushing the oldest one in flight past the staleness bound.

    Holding every dispatch while the oldest in flight is S versions behind would keep at most W - 1 steps in flight
    (in the steady state the oldest is always exactly W - 1 behind, about to arrive): one worker idles all the time.
    A new step overtakes the oldest only if the oldest takes a step longer than the new one, so dispatch is held only
    for an oldest step that is at the bound and has already run as long as a typical step (the median of the recent
    ones). Until every worker has finished a step, the typical time is unknown (the first steps include the workers'
    start-up, which varies) and any oldest step at the bound holds dispatch.
    """

    def __init__(self, bound: int, workers: int) -> None:
        self.bound, self.workers = bound, workers
        self.recent: deque[float] = deque(maxlen=RECENT_STEPS)
        self.observed = 0

    def finished(self, seconds: float) -> None:
        self.recent.append(seconds)
        self.observed += 1

    def typical_s(self) -> float | None:
        return statistics.median(self.recent) if self.observed >= self.workers else None

    def holds(self, oldest_lag: int | None, oldest_elapsed_s: float) -> bool:
        """`oldest_lag`: versions the server moved on since the oldest step in flight was sent (None: none in flight)."""
        if oldest_lag is None or oldest_lag < self.bound:
            return False
        typical = self.typical_s()
        return typical is None or oldest_elapsed_s >= typical


@dataclass(frozen=True)
class InFlightStep:
    """A whole step handed to a worker: which step, to whom, on which parameter version, and where its update is."""

    step: int
    worker_id: int
    version: int
    sent_at: float
    update_ref: ray.ObjectRef


class AsyncSchedule:
    def __init__(self, job: JobConfig, group: WorkerGroup, server: ServerClient, stats: DistributedStats) -> None:
        self.job, self.group, self.server, self.stats = job, group, server, stats
        self.failures = WorkerFailures(job.distributed, group, stats)

    def steps(self, start: int) -> Generator[StepOutcome, None, None]:
        config, train = self.job.distributed, self.job.train
        bound = config.staleness_bound()
        gate = DispatchGate(bound, config.workers)
        redo: deque[int] = deque()  # steps to compute again (their worker died, or their update was too stale)
        silent: set[int] = set()  # steps applied again after a server restart: already counted by the loop
        next_new = start  # steps below this were handed out (or applied before a resume)
        inflight: dict[ray.ObjectRef, InFlightStep] = {}  # keyed by the report's reference
        applied = start
        while applied < train.steps or silent:
            self.group.poll()
            busy = {s.worker_id for s in inflight.values()}
            for slot in self.group.live_workers():
                if slot.worker_id in busy:
                    continue
                oldest = min(inflight.values(), key=lambda s: (s.version, s.sent_at), default=None)
                lag = None if oldest is None else self.server.params.version - oldest.version
                if gate.holds(lag, time.monotonic() - oldest.sent_at if oldest else 0.0):
                    break  # a straggler at the bound: one more step overtaking it would make it too stale
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
                inflight[report_ref] = InFlightStep(step, slot.worker_id, params.version, time.monotonic(), update_ref)
            if not inflight:
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_INTERVAL_S)
            for ref in ready:
                sent = inflight.pop(ref)
                try:
                    slice_report = ray.get(ref)
                    self.failures.finished(sent)
                    gate.finished(time.monotonic() - sent.sent_at)
                except RayActorError as exc:
                    self.group.lost(sent.worker_id, exc)
                    self._redo(redo, sent.step)
                    continue
                except RayTaskError as exc:
                    self.failures.raised(sent, sent.step, f"step {sent.step}", exc)
                    self._redo(redo, sent.step)
                    continue
                staleness = self.server.params.version - sent.version
                weight = staleness_weight(staleness, bound, config.stale_policy)
                if weight is None:
                    self.stats.dropped += 1
                    self._redo(redo, sent.step)
                    continue
                try:
                    report = self.server.apply(sent.step, weight, [sent.update_ref])
                except ObjectLostError as exc:
                    log.warning("step %d: its update was lost (%s); recomputing it", sent.step, exc)
                    self._redo(redo, sent.step)
                    continue
                except ParameterServerLost as exc:
                    resume = self.server.restart(exc)
                    # Everything in flight was computed for the lost server; the steps it had applied since the
                    # checkpoint are applied again, silently (the loop has counted them).
                    abandoned = [s.step for s in inflight.values()] + [sent.step]
                    inflight.clear()
                    silent.update(s for s in range(resume, next_new) if s not in abandoned and s not in redo)
                    for s in [*sorted(silent), *abandoned]:
                        if s not in redo:
                            self._redo(redo, s)
                    break
                if report.duplicate:
                    continue
                if weight != 1.0:
                    self.stats.downweighted += 1
                if sent.step in silent:
                    silent.discard(sent.step)
                    continue
                applied += 1
                yield self.stats.outcome([slice_report], report, staleness)
            for late in self.failures.expired(inflight, "async step"):
                self._redo(redo, late.step)

    def _redo(self, redo: deque[int], step: int) -> None:
        self.stats.recomputed_tasks += self.job.train.meta_batch
        redo.append(step)
