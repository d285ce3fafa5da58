"""The driver's handle on the parameter-server actor: every call to it, timed, with its death turned into
`ParameterServerLost`; the newest published parameter version; and the restart of a lost server from the run's
last checkpoint."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from metadist.algorithms.functional import Params
from metadist.algorithms.outer import OuterState
from metadist.config import JobConfig
from metadist.core import LoopState, ModelSpec
from metadist.distributed.failures import ParameterServerLost
from metadist.distributed.parameter_server import ApplyReport, ParameterServer, ParamsVersion
from metadist.distributed.stats import DistributedStats
from metadist.tracking.system_metrics import SystemMetricsTarget

log = logging.getLogger(__name__)

METRICS_FLUSH_TIMEOUT_S = 10.0  # at close, how long the server gets to flush its last system metrics to MLflow


class ServerClient:
    def __init__(self, job: JobConfig, spec: ModelSpec, stats: DistributedStats, checkpoint_directory: str) -> None:
        self.job, self.spec = job, spec
        self.stats = stats
        self.checkpoint_directory = checkpoint_directory
        self.restarts = 0
        self.system_metrics: SystemMetricsTarget | None = None  # the run the server logs its system metrics into
        self.actor = self._start_actor()
        self.params: ParamsVersion = _get(self.actor.current.remote())
        self.step_count, self.skipped = 0, 0
        self._final_state: OuterState | None = None
        # What a restarted server starts from: the newest checkpoint written in this run, else the state this run
        # resumed from, else the seeded initial parameters (step 0).
        self._last_checkpoint: str | None = None
        self._resumed_from: OuterState | None = None

    def _start_actor(self) -> Any:
        here = ray.get_runtime_context().get_node_id()
        # The server lives on the driver's node: losing that node loses the driver anyway, and no other node's
        # loss can take the parameters with it.
        server_class: Any = ray.remote(ParameterServer)  # an actor class: its handles' methods are typed at runtime only
        actor = server_class.options(
            num_cpus=0, max_restarts=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote(self.job, self.spec.to_dict())
        if self.system_metrics is not None:
            actor.start_system_metrics.remote(self.system_metrics)
        return actor

    def record_system_metrics(self, target: SystemMetricsTarget | None) -> None:
        """The server (and any restarted one) logs its system metrics into `target`'s run."""
        self.system_metrics = target
        self.actor.start_system_metrics.remote(target)

    def restart(self, cause: BaseException) -> int:
        """A new server, from the run's last checkpoint; the step the run continues from (the steps between it and
        where the run was are computed again). ParameterServerLost when distributed.server_restarts are used up."""
        allowed = self.job.distributed.server_restarts
        if self.restarts >= allowed:
            raise ParameterServerLost(
                f"{cause}; distributed.server_restarts = {allowed} used up. Resume the run from its last checkpoint in "
                f"{self.checkpoint_directory} with `metadist train JOB.yaml --resume`"
            ) from cause
        self.restarts += 1
        with contextlib.suppress(Exception):
            ray.kill(self.actor)
        self.actor = self._start_actor()
        if self._last_checkpoint is not None:
            self.params, step = _get(self.actor.restore.remote(self._last_checkpoint))
            source = self._last_checkpoint
        elif self._resumed_from is not None:
            self.params, step = _get(self.actor.load_state.remote(self._resumed_from)), self._resumed_from.next_step
            source = "the state this run resumed from"
        else:
            self.params, step = _get(self.actor.current.remote()), 0
            source = "the initial parameters"
        self.step_count, self.skipped = _get(self.actor.counts.remote())
        log.warning("parameter server lost (%s); restarted from %s at step %d (restart %d of %d)",
                    str(cause).splitlines()[0], source, step, self.restarts, allowed)
        return step

    def apply(self, step: int, weight: float, update_refs: list) -> ApplyReport:
        """Outer step `step` from the updates behind `update_refs` (summed in their order), scaled by `weight`."""
        started = time.perf_counter()
        try:
            report: ApplyReport = _get(self.actor.apply.remote(step, weight, *update_refs))
        except RayActorError as exc:
            raise ParameterServerLost(f"the parameter server died at step {step} ({exc})") from exc
        self.stats.apply_s.append(report.apply_s)
        self.stats.apply_round_trip_s.append(time.perf_counter() - started)
        self.params = report.params
        self.step_count, self.skipped = report.step_count, report.skipped
        return report

    def meta_params(self) -> Params:
        if self._final_state is not None:
            return self._final_state.params
        return _get(self.params.box[0])

    def state(self) -> OuterState:
        return self._final_state if self._final_state is not None else _get(self.actor.state.remote())

    def load_state(self, state: OuterState) -> None:
        self.params = _get(self.actor.load_state.remote(state))
        self.step_count, self.skipped = state.step_count, state.skipped
        self._resumed_from = state

    def save(self, step: int, loop: LoopState, directory: str) -> str:
        """The server writes the checkpoint (it holds the optimizer state) into the run's folder `directory` (an
        absolute path or a URI: the server's working directory is not the driver's), in the local trainer's format."""
        try:
            uri: str = _get(self.actor.save.remote(step, loop, directory))
        except RayActorError as exc:
            raise ParameterServerLost(
                f"the parameter server died before checkpointing step {step} ({exc}); resume the run from its last "
                f"checkpoint in {self.checkpoint_directory} with `metadist train JOB.yaml --resume`"
            ) from exc
        self._last_checkpoint = uri
        return uri

    def close(self) -> None:
        """Keep the final state here (evaluation and the final checkpoint read it after the actor is gone)."""
        if self._final_state is None:
            try:
                self._final_state = _get(self.actor.state.remote())
            except RayActorError:
                pass  # the server is gone; its last checkpoint holds the state
        if self.system_metrics is not None:
            ray.wait([self.actor.stop_system_metrics.remote()], timeout=METRICS_FLUSH_TIMEOUT_S)
        ray.kill(self.actor)


def _get(ref: Any) -> Any:
    """ray.get of one reference (its overloads type a reference of unknown type as a list)."""
    return ray.get(ref)
