"""The driver's handle on the parameter-server actor: every call to it, timed, with its death turned into
`ParameterServerLost`, and the newest published parameter version."""

from __future__ import annotations

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


class ServerClient:
    def __init__(self, job: JobConfig, spec: ModelSpec, stats: DistributedStats, checkpoint_directory: str) -> None:
        here = ray.get_runtime_context().get_node_id()
        # The server lives on the driver's node: losing that node loses the driver anyway, and no other node's
        # loss can take the parameters with it.
        server_class: Any = ray.remote(ParameterServer)  # an actor class: its handles' methods are typed at runtime only
        self.actor = server_class.options(
            num_cpus=0, max_restarts=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote(job, spec.to_dict())
        self.stats = stats
        self.checkpoint_directory = checkpoint_directory
        self.params: ParamsVersion = _get(self.actor.current.remote())
        self.step_count, self.skipped = 0, 0
        self._final_state: OuterState | None = None

    def apply(self, step: int, weight: float, update_refs: list) -> ApplyReport:
        """Outer step `step` from the updates behind `update_refs` (summed in their order), scaled by `weight`."""
        started = time.perf_counter()
        try:
            report: ApplyReport = _get(self.actor.apply.remote(step, weight, *update_refs))
        except RayActorError as exc:
            raise ParameterServerLost(
                f"the parameter server died at step {step} ({exc}); resume the run from its last checkpoint in "
                f"{self.checkpoint_directory} with `metadist train JOB.yaml --resume`"
            ) from exc
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

    def save(self, step: int, loop: LoopState) -> str:
        """The server writes the checkpoint (it holds the optimizer state), in the local trainer's format."""
        try:
            return _get(self.actor.save.remote(step, loop, self.checkpoint_directory))
        except RayActorError as exc:
            raise ParameterServerLost(f"the parameter server died before checkpointing step {step}: {exc}") from exc

    def close(self) -> None:
        """Keep the final state here (evaluation and the final checkpoint read it after the actor is gone)."""
        if self._final_state is None:
            try:
                self._final_state = _get(self.actor.state.remote())
            except RayActorError:
                pass  # the server is gone; its last checkpoint holds the state
        ray.kill(self.actor)


def _get(ref: Any) -> Any:
    """ray.get of one reference (its overloads type a reference of unknown type as a list)."""
    return ray.get(ref)
