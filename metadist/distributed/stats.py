"""What the distributed step source adds to each log line: workers, staleness, restarts, traffic, latency; and the
outer step as the loop sees it, folded from the slices' reports."""

from __future__ import annotations

import time
from collections import Counter

from metadist.algorithms.outer import StepResult
from metadist.distributed.parameter_server import ApplyReport
from metadist.distributed.worker import SliceReport
from metadist.training.loop import StepOutcome


def summed(dicts: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0.0) + v
    return out


class DistributedStats:
    def __init__(self) -> None:
        self.recomputed_tasks = 0  # tasks computed again: lost with a worker, or part of a dropped stale update
        self.dropped = 0  # async updates dropped as too stale
        self.downweighted = 0
        self.timed_out = 0  # slices (or async steps) handed to another worker after their deadline
        self._restart_window()

    def _restart_window(self) -> None:
        self.started = time.perf_counter()
        self.steps = 0
        self.staleness: list[int] = []
        self.apply_s: list[float] = []
        self.apply_round_trip_s: list[float] = []
        self.reducer_bytes: list[int] = []  # update bytes each reducer took in, per step and reducer
        self.slices = 0
        self.prefetched = 0
        self.bytes = 0
        self.server_bytes = 0
        self.worker_tasks: Counter = Counter()
        self.worker_placement: dict[int, dict[str, float]] = {}

    def outcome(self, reports: list[SliceReport], report: ApplyReport, staleness: int) -> StepOutcome:
        """The applied step as the loop sees it; its before-adaptation metrics only when every slice computed them."""
        self.steps += 1
        self.staleness.append(staleness)
        self.bytes += report.received_bytes + sum(r.fetched_bytes for r in reports)
        self.server_bytes += report.received_bytes
        for r in reports:
            self.slices += 1
            self.prefetched += r.prefetched
            self.worker_tasks[r.worker_id] += r.num_tasks
            self.worker_placement[r.worker_id] = r.placement
        num_tasks = sum(r.num_tasks for r in reports)
        before = None
        if all(r.before is not None for r in reports):
            before = {k: v / num_tasks for k, v in summed([r.before or {} for r in reports]).items()}
        return StepOutcome(summed([r.metrics for r in reports]), num_tasks,
                           StepResult(report.applied, report.lr, report.update_norm), before=before)

    def close(self, *, workers: int, restarts: int) -> dict[str, float]:
        """The figures since the last call, and start a new window."""
        seconds = max(time.perf_counter() - self.started, 1e-9)
        out = {
            "workers": float(workers),
            "worker_restarts": float(restarts),
            "recomputed_tasks": float(self.recomputed_tasks),
            "dropped_stale_updates": float(self.dropped),
            "downweighted_updates": float(self.downweighted),
            "timed_out_slices": float(self.timed_out),
            "staleness_mean": sum(self.staleness) / len(self.staleness) if self.staleness else 0.0,
            "staleness_max": float(max(self.staleness, default=0)),
            "bytes_per_step": self.bytes / max(self.steps, 1),
            "server_bytes_per_step": self.server_bytes / max(self.steps, 1),
            "reducer_bytes_per_step_max": float(max(self.reducer_bytes, default=0)),
            "prefetch_hit_rate": self.prefetched / max(self.slices, 1),
            "ps_apply_ms": 1e3 * sum(self.apply_s) / max(len(self.apply_s), 1),
            "ps_round_trip_ms": 1e3 * sum(self.apply_round_trip_s) / max(len(self.apply_round_trip_s), 1),
        }
        # Each worker's CPU, memory and GPU use are MLflow's system metrics (system/worker-<id>/...), not these.
        for worker_id, tasks in sorted(self.worker_tasks.items()):
            out[f"worker/{worker_id}/tasks_per_s"] = tasks / seconds
            for k, v in self.worker_placement.get(worker_id, {}).items():
                out[f"worker/{worker_id}/{k}"] = v
        self._restart_window()
        return out
