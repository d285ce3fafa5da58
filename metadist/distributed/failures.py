"""What goes wrong in a distributed run and what is done about it, in one place.

- A task worker dies (killed, crashed, its node lost): `WorkerGroup.lost` replaces it (up to
  distributed.worker_restarts) and the schedules hand its in-flight slices or steps to another worker; episodes
  are f(seed, step, task), so the recomputed work is the same work.
- A task worker raises (CUDA out of memory, an I/O error): it is replaced the same way and the slice retried, at
  most distributed.slice_retries times; then the run fails with the worker's node and exception (`SliceFailed`).
- A task worker hangs: past its deadline (`SliceDeadline`) the slice goes to another worker, the hung one is
  replaced, and its late result, should it come, is ignored.
- An update object is lost with its node before the server read it (`ObjectLostError`): the step is recomputed,
  at most MAX_STEP_ATTEMPTS times in a row (`UpdatesLost`).
- The parameter server dies (`ParameterServerLost`): it is restarted from its last checkpoint and the steps since
  are recomputed, at most distributed.server_restarts times; then the run fails, naming the folder to resume from.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from metadist.config import DistributedConfig
from metadist.distributed.cluster import ClusterError
from metadist.distributed.stats import DistributedStats
from metadist.distributed.worker_group import WorkerGroup

log = logging.getLogger(__name__)

# A step whose update objects were lost with their node is recomputed; more losses than this in one step fail it.
MAX_STEP_ATTEMPTS = 5
# Without distributed.slice_timeout_s: a slice is late after this many times the slowest one seen so far ...
DEADLINE_FACTOR = 10.0
# ... and never before this: the first slices include a worker's start-up (building its sampler, warming caches).
MIN_DEADLINE_S = 60.0


class ParameterServerLost(ClusterError):
    """The parameter-server actor died and could not be restarted within the run."""


class UpdatesLost(ClusterError):
    """A step's updates were lost with their nodes MAX_STEP_ATTEMPTS times in a row."""


class SliceFailed(ClusterError):
    """One slice's worker raised more than distributed.slice_retries times."""


class SliceDeadline:
    """How long a slice (or an async step) may take before its worker counts as hung."""

    def __init__(self, config: DistributedConfig) -> None:
        self.fixed_s = config.slice_timeout_s
        self.slowest_s = 0.0

    def observe(self, seconds: float) -> None:
        self.slowest_s = max(self.slowest_s, seconds)

    def seconds(self) -> float:
        if self.fixed_s is not None:
            return self.fixed_s
        return max(MIN_DEADLINE_S, DEADLINE_FACTOR * self.slowest_s)


class RetryBudget:
    """Attempts per slice (or step) after its worker raised; one more than allowed fails the run."""

    def __init__(self, retries: int) -> None:
        self.retries = retries
        self.failures: dict[object, int] = {}

    def charge(self, key: object, where: str, exc: BaseException) -> None:
        self.failures[key] = self.failures.get(key, 0) + 1
        if self.failures[key] > self.retries:
            cause = getattr(exc, "cause", None) or exc
            raise SliceFailed(
                f"{where} raised {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''} — "
                f"{self.failures[key]} times for the same work (distributed.slice_retries = {self.retries})"
            ) from exc


class InFlight(Protocol):
    """What the schedules know of work handed to a worker."""

    @property
    def worker_id(self) -> int: ...

    @property
    def sent_at(self) -> float: ...


class WorkerFailures:
    """What a schedule does when a worker raises or hangs: replace the worker, count it, say so, give the work back."""

    def __init__(self, config: DistributedConfig, group: WorkerGroup, stats: DistributedStats) -> None:
        self.group, self.stats = group, stats
        self.deadline = SliceDeadline(config)
        self.retries = RetryBudget(config.slice_retries)

    def finished(self, sent: InFlight) -> None:
        self.deadline.observe(time.monotonic() - sent.sent_at)

    def raised(self, sent: InFlight, key: object, what: str, exc: Any) -> None:
        """The worker raised computing `what`: retry on a fresh worker (SliceFailed past the budget)."""
        where = self.group.where(sent.worker_id)
        log.warning("%s: %s raised %s; replacing it and retrying", what, where, type(exc.cause).__name__ if exc.cause else "an error")
        self.retries.charge(key, f"{what}: {where}", exc)
        self.group.replace(sent.worker_id, exc)

    def expired(self, inflight: dict[Any, Any], what: str) -> list[Any]:
        """Remove from `inflight` the work past its deadline (a late result is never read), replace the hung workers,
        and return that work, to be handed out again."""
        limit_s = self.deadline.seconds()
        now = time.monotonic()
        late = [ref for ref, sent in inflight.items() if now - sent.sent_at > limit_s]
        for ref in late:
            where = self.group.where(inflight[ref].worker_id)
            log.warning("%s: %s did not return within %.0f s; replacing it", what, where, limit_s)
            self.group.replace(inflight[ref].worker_id, TimeoutError(f"{where}: no result within {limit_s:.0f} s"))
            self.stats.timed_out += 1
        return [inflight.pop(ref) for ref in late]
