"""What a person watching a run sees: the progress bar's figures, the log lines that stand in for it, and the
training metrics averaged over the steps between two log lines."""

from __future__ import annotations

import logging
import time

from tqdm.auto import tqdm

from metadist.algorithms.outer import StepResult

log = logging.getLogger("metadist.training")

# Metric → its short name on the bar and in log lines; the rest are logged to MLflow only.
SHORT_NAMES = {"loss_after": "loss", "accuracy_after": "acc", "val_accuracy_after": "val_acc", "val_loss_after": "val_loss",
               "tasks_per_s": "tasks/s"}


def short_figures(metrics: dict[str, float]) -> dict[str, str]:
    return {name: f"{metrics[k]:.3g}" for k, name in SHORT_NAMES.items() if k in metrics}


class ProgressDisplay:
    """The run's progress bar (or, without one, a log line per logged step, for batch jobs and `ray job logs`)."""

    def __init__(self, *, name: str, total: int, initial: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=initial, desc=name, unit="step", disable=not enabled, dynamic_ncols=True)
        self.shown: dict[str, str] = {}

    def advance(self) -> None:
        self.bar.update(1)

    def show(self, step: int, metrics: dict[str, float], label: str = "") -> None:
        """Held-out figures (label "held-out ") join the training ones until the next training line replaces them."""
        self.shown = {**self.shown, **short_figures(metrics)} if label else short_figures(metrics)
        self.bar.set_postfix(self.shown, refresh=False)
        if not self.enabled:
            log.info("step %d/%d %s%s", step, self.total, label, " ".join(f"{k} {v}" for k, v in short_figures(metrics).items()))

    def close(self) -> None:
        self.bar.close()


class MetricsWindow:
    """Training metrics averaged over the steps since the last log line, and the throughput over them."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.restart()

    def restart(self) -> None:
        """Start timing afresh (after an evaluation or a checkpoint), keeping the metric sums."""
        self.tasks, self.start = 0, time.perf_counter()

    def add(self, metric_sums: dict[str, float], num_tasks: int) -> None:
        self.steps += 1
        self.tasks += num_tasks
        for k, v in metric_sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v / num_tasks

    def close(self, result: StepResult, skipped_updates: int) -> dict[str, float]:
        now = time.perf_counter()
        metrics = {k: v / self.steps for k, v in self.sums.items()}
        metrics.update(
            tasks_per_s=self.tasks / max(now - self.start, 1e-9),
            lr=result.lr,
            update_norm=result.update_norm,
            skipped_updates=float(skipped_updates),
        )
        self.sums, self.steps = {}, 0
        self.restart()
        return metrics
