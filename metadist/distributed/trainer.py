"""The distributed trainer: the shared outer loop (metadist.training.trainer.MetaTrainer) with its steps computed by
Ray task workers and applied by the parameter-server actor.

Synchronous mode (`distributed.mode: sync`), one outer step:
    cut the meta-batch's task indices into `slices` contiguous ranges → hand them round-robin to the live workers
    → gather the reports; a dead worker's slices go to another worker (recomputed, same episodes) → the server sums
    the slices' updates in slice order and applies the step once → the next version of the parameters.
Episodes are a function of (seed, step, task index) and the sum is taken in slice order whoever computed a slice,
so the run does not depend on how many workers were up, or which died: for a given slice count it is the same to
the bit, and it equals the local trainer's up to float summation order.

Asynchronous mode (`mode: async`): each worker computes whole outer steps (all meta_batch tasks of step s) on the
newest parameters it was given, and the server applies each as it arrives. The staleness of an update is how many
versions the server moved on while it was computed; above `max_staleness` it is dropped and its step recomputed on
fresh parameters (`stale_policy: drop`) or applied scaled by 1/(1 + staleness - S) (`downweight`). Either way each
of the run's `train.steps` outer steps is applied exactly once.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Iterator

import ray
import torch
from ray.exceptions import ObjectLostError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from metadist.algorithms.functional import Params
from metadist.algorithms.outer import StepResult
from metadist.config import JobConfig
from metadist.distributed.cluster import ClusterError, Connection, connect, worker_resources
from metadist.distributed.parameter_server import ApplyReport, ParameterServer, ParamsVersion
from metadist.distributed.worker import SliceReport
from metadist.distributed.worker_group import POLL_INTERVAL_S, WorkerGroup
from metadist.errors import ConfigError
from metadist.training.tasks import build, make_sampler, model_spec, resolve_device
from metadist.training.trainer import MetaTrainer, StepOutcome, checkpoint_dir

log = logging.getLogger(__name__)

# A step whose update objects were lost with their node is recomputed; more losses than this in one step fail it.
MAX_STEP_ATTEMPTS = 5


class ParameterServerLost(ClusterError):
    """The parameter-server actor died; the run resumes from its last checkpoint with `metadist train --resume`."""


def slice_bounds(meta_batch: int, slices: int) -> list[tuple[int, int]]:
    """`slices` contiguous task ranges covering range(meta_batch), sizes differing by at most one."""
    return [(j * meta_batch // slices, (j + 1) * meta_batch // slices) for j in range(slices)]


def staleness_weight(staleness: int, max_staleness: int, policy: str) -> float | None:
    """The weight an async update is applied with; None = dropped (its step is recomputed)."""
    if staleness <= max_staleness:
        return 1.0
    return None if policy == "drop" else 1.0 / (1 + staleness - max_staleness)


class DistributedTrainer(MetaTrainer):
    """`metadist train JOB.yaml --workers N`: task workers and a parameter server on a Ray cluster.

    >>> trainer = DistributedTrainer(job)          # joins or starts Ray, starts the parameter server
    >>> result = trainer.run()                     # starts the workers, trains, evaluates, releases the actors
    """

    def __init__(self, job: JobConfig, *, resume: str | bool = False, progress: bool = True) -> None:
        if job.distributed.workers < 1:
            raise ConfigError("distributed.workers must be at least 1 for the distributed trainer (0 trains locally)")
        self.job = job
        self.progress = progress
        if job.train.threads:
            torch.set_num_threads(job.train.threads)  # the driver's own work: held-out evaluation
        self.device = resolve_device(job.train.device)
        spec = model_spec(job, make_sampler(job, "train", progress=progress))
        self.spec = spec
        has_test = job.data.regression is not None or job.data.test is not None
        self.test_sampler = make_sampler(job, "test", progress=progress) if has_test else None
        self.model, self.learner = build(job, spec)
        self.model.to(self.device)
        self._init_loop_state()
        # The server writes checkpoints from its own working directory: a relative local path is made absolute here.
        directory = checkpoint_dir(job)
        self.checkpoint_directory = directory if "://" in directory else os.path.abspath(directory)

        self.group: WorkerGroup | None = None
        self.server = None
        self._step_count, self._skipped = 0, 0
        self._final_state: dict | None = None
        self._stats = _Stats()
        self.connection: Connection = connect(job.distributed)
        try:
            self.resources = worker_resources(job.distributed, job.train)
            here = ray.get_runtime_context().get_node_id()
            # The server lives on the driver's node: losing that node loses the driver anyway, and no other node's
            # loss can take the parameters with it.
            self.server = ray.remote(ParameterServer).options(
                num_cpus=0, max_restarts=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
            ).remote(job, spec.to_dict())
            self._params: ParamsVersion = ray.get(self.server.current.remote())
            if resume:
                self._restore(checkpoint_dir(job) if resume is True else resume)
        except BaseException:
            self.close()
            raise

    # -- the step source -----------------------------------------------------------------------------------------
    def run(self, tracker=None):
        try:
            self.group = WorkerGroup(self.job, self.spec.to_dict(), self.resources)
            self.group.start()
            log.info("%d task workers up (%s each), %s mode", len(self.group.live), self.resources.as_options(),
                     self.job.distributed.mode)
            return super().run(tracker)
        finally:
            self.close()

    def _outer_steps(self) -> Iterator[StepOutcome]:
        if self.job.distributed.mode == "sync":
            return self._sync_steps()
        return self._async_steps()

    def _sync_steps(self) -> Iterator[StepOutcome]:
        train = self.job.train
        bounds = slice_bounds(train.meta_batch, self.job.distributed.slice_count)
        while self.step < train.steps:
            step = self.step
            self.group.poll()  # workers placed since the last step join now
            for _attempt in range(MAX_STEP_ATTEMPTS):
                reports, update_refs = self._compute_slices(step, bounds, with_before=self._logs_at(step + 1))
                try:
                    report = self._apply(step, 1.0, update_refs)
                    break
                except ObjectLostError as exc:  # an update object went down with its node: recompute the step
                    log.warning("step %d: an update was lost (%s); recomputing the step", step, exc)
                    self._stats.recomputed_tasks += train.meta_batch
            else:
                raise ClusterError(f"step {step}: updates lost {MAX_STEP_ATTEMPTS} times in a row; giving up")
            self._stats.staleness.append(0)
            yield self._outcome(reports, report)

    def _compute_slices(self, step: int, bounds: list[tuple[int, int]], with_before: bool) -> tuple[list[SliceReport], list]:
        """Every slice of `step` computed on the current parameters, by whichever workers stay alive."""
        todo = deque(range(len(bounds)))
        inflight: dict = {}  # report ref -> (slice, worker id, update ref)
        done: dict[int, tuple[SliceReport, object]] = {}
        first_round = True
        last_step = step + 1 >= self.job.train.steps
        while todo or inflight:
            if todo:
                live = self.group.live_workers()
                load = Counter(worker_id for _, worker_id, _ in inflight.values())
                while todo:
                    j = todo.popleft()
                    if first_round:  # the same worker gets the same slice step after step: its prefetch guess holds
                        slot = live[j % len(live)]
                    else:  # a recomputed slice goes to the least busy live worker
                        slot = min(live, key=lambda s: load[s.worker_id])
                    load[slot.worker_id] += 1
                    lo, hi = bounds[j]
                    prefetch = None if last_step else (step + 1, lo, hi)
                    report_ref, update_ref = slot.actor.compute.remote(
                        step, lo, hi, self._params.version, self._params.box, with_before, prefetch
                    )
                    inflight[report_ref] = (j, slot.worker_id, update_ref)
                first_round = False
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                j, worker_id, update_ref = inflight.pop(ref)
                try:
                    done[j] = (ray.get(ref), update_ref)
                except RayActorError as exc:
                    self.group.lost(worker_id, exc)
                    self._stats.recomputed_tasks += bounds[j][1] - bounds[j][0]
                    todo.append(j)
        reports = [done[j][0] for j in range(len(bounds))]
        return reports, [done[j][1] for j in range(len(bounds))]

    def _async_steps(self) -> Iterator[StepOutcome]:
        config, train = self.job.distributed, self.job.train
        tasks = (0, train.meta_batch)
        redo: deque[int] = deque()  # steps to compute again (their worker died, or their update was too stale)
        next_new = self.step  # steps below this were handed out (or applied before a resume)
        inflight: dict = {}  # report ref -> (step, worker id, version, update ref)
        applied = self.step
        while applied < train.steps:
            self.group.poll()
            busy = {worker_id for _, worker_id, _, _ in inflight.values()}
            for slot in self.group.live_workers():
                if slot.worker_id in busy:
                    continue
                if redo:
                    step = redo.popleft()
                elif next_new < train.steps:
                    step, next_new = next_new, next_new + 1
                else:
                    break
                report_ref, update_ref = slot.actor.compute.remote(
                    step, *tasks, self._params.version, self._params.box, self._logs_at(step + 1)
                )
                inflight[report_ref] = (step, slot.worker_id, self._params.version, update_ref)
            if not inflight:
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_INTERVAL_S)
            for ref in ready:
                step, worker_id, version, update_ref = inflight.pop(ref)
                try:
                    slice_report = ray.get(ref)
                except RayActorError as exc:
                    self.group.lost(worker_id, exc)
                    self._stats.recomputed_tasks += train.meta_batch
                    redo.append(step)
                    continue
                staleness = self._params.version - version
                weight = staleness_weight(staleness, config.max_staleness, config.stale_policy)
                if weight is None:
                    self._stats.dropped += 1
                    self._stats.recomputed_tasks += train.meta_batch
                    redo.append(step)
                    continue
                try:
                    report = self._apply(step, weight, [update_ref])
                except ObjectLostError as exc:
                    log.warning("step %d: its update was lost (%s); recomputing it", step, exc)
                    redo.append(step)
                    continue
                if report.duplicate:
                    continue
                self._stats.staleness.append(staleness)
                if weight != 1.0:
                    self._stats.downweighted += 1
                applied += 1
                yield self._outcome([slice_report], report)

    def _apply(self, step: int, weight: float, update_refs: list) -> ApplyReport:
        started = time.perf_counter()
        try:
            report: ApplyReport = ray.get(self.server.apply.remote(step, weight, *update_refs))
        except RayActorError as exc:
            raise ParameterServerLost(
                f"the parameter server died at step {step} ({exc}); resume the run from its last checkpoint in "
                f"{self.checkpoint_directory} with `metadist train JOB.yaml --resume`"
            ) from exc
        self._stats.apply_s.append(report.apply_s)
        self._stats.apply_round_trip_s.append(time.perf_counter() - started)
        self._params = report.params
        self._step_count, self._skipped = report.step_count, report.skipped
        return report

    def _outcome(self, reports: list[SliceReport], report: ApplyReport) -> StepOutcome:
        metrics: dict[str, float] = {}
        for r in reports:
            for k, v in r.metrics.items():
                metrics[k] = metrics.get(k, 0.0) + v
        num_tasks = sum(r.num_tasks for r in reports)
        before = None
        if all(r.before is not None for r in reports):
            sums: dict[str, float] = {}
            for r in reports:
                for k, v in r.before.items():
                    sums[k] = sums.get(k, 0.0) + v
            before = {k: v / num_tasks for k, v in sums.items()}
            self._stats.before = before
        self._stats.add(reports, report)
        return StepOutcome(metrics, num_tasks, StepResult(report.applied, report.lr, report.update_norm),
                           before=before or self._stats.before)

    def _logs_at(self, step: int) -> bool:
        train = self.job.train
        return step % train.log_every == 0 or step == train.steps

    def _log_extras(self) -> dict[str, float]:
        live = len(self.group.live) if self.group else 0
        restarts = self.group.restarts if self.group else 0
        return self._stats.close(workers=live, restarts=restarts)

    # -- state -------------------------------------------------------------------------------------------------------
    def meta_params(self) -> Params:
        if self._final_state is not None:
            params = self._final_state["params"]
        else:
            params = ray.get(self._params.box[0])
        return {k: v.detach().clone().to(self.device) for k, v in params.items()}

    def _optimizer_state(self) -> dict:
        return self._final_state if self._final_state is not None else ray.get(self.server.state_dict.remote())

    def _load_optimizer_state(self, state: dict) -> None:
        # Every outer step is either applied or skipped, so this is the next step to take.
        next_step = int(state["step_count"]) + int(state["skipped"])
        self._params = ray.get(self.server.load_state_dict.remote(state, next_step))
        self._step_count, self._skipped = int(state["step_count"]), int(state["skipped"])

    def save_checkpoint(self) -> str:
        """The parameter server writes it (it holds the optimizer state), in the local trainer's format."""
        try:
            return ray.get(self.server.save.remote(self.step, self._trainer_state(), self.checkpoint_directory))
        except RayActorError as exc:
            raise ParameterServerLost(f"the parameter server died before checkpointing step {self.step}: {exc}") from exc

    @property
    def applied_steps(self) -> int:
        return self._step_count

    @property
    def skipped_updates(self) -> int:
        return self._skipped

    @property
    def worker_restarts(self) -> int:
        return self.group.restarts if self.group else 0

    def close(self) -> None:
        """Release the workers and the server (keeping the final parameters here); stop a Ray started here."""
        if self.group is not None:
            self.group.shutdown()
        if self.server is not None and self._final_state is None:
            try:
                self._final_state = ray.get(self.server.state_dict.remote())
            except RayActorError:
                pass  # the server is gone; its last checkpoint holds the state
            ray.kill(self.server)
        self.connection.close()


class _Stats:
    """What the distributed step source adds to each log line: workers, staleness, restarts, traffic, latency."""

    def __init__(self) -> None:
        self.recomputed_tasks = 0  # tasks computed again: lost with a worker, or part of a dropped stale update
        self.dropped = 0  # async updates dropped as too stale
        self.downweighted = 0
        self.before: dict[str, float] | None = None
        self._restart_window()

    def _restart_window(self) -> None:
        self.started = time.perf_counter()
        self.steps = 0
        self.staleness: list[int] = []
        self.apply_s: list[float] = []
        self.apply_round_trip_s: list[float] = []
        self.bytes = 0
        self.worker_tasks: Counter = Counter()
        self.worker_system: dict[int, dict[str, float]] = {}

    def add(self, reports: list[SliceReport], report: ApplyReport) -> None:
        self.steps += 1
        self.bytes += report.received_bytes + sum(r.fetched_bytes for r in reports)
        for r in reports:
            self.worker_tasks[r.worker_id] += r.num_tasks
            self.worker_system[r.worker_id] = r.system

    def close(self, *, workers: int, restarts: int) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.started, 1e-9)
        out = {
            "workers": float(workers),
            "worker_restarts": float(restarts),
            "recomputed_tasks": float(self.recomputed_tasks),
            "dropped_stale_updates": float(self.dropped),
            "downweighted_updates": float(self.downweighted),
            "staleness_mean": sum(self.staleness) / len(self.staleness) if self.staleness else 0.0,
            "staleness_max": float(max(self.staleness, default=0)),
            "bytes_per_step": self.bytes / max(self.steps, 1),
            "ps_apply_ms": 1e3 * sum(self.apply_s) / max(len(self.apply_s), 1),
            "ps_round_trip_ms": 1e3 * sum(self.apply_round_trip_s) / max(len(self.apply_round_trip_s), 1),
        }
        for worker_id, tasks in sorted(self.worker_tasks.items()):
            out[f"worker/{worker_id}/tasks_per_s"] = tasks / seconds
            for k, v in self.worker_system.get(worker_id, {}).items():
                out[f"worker/{worker_id}/{k}"] = v
        self._restart_window()
        return out
