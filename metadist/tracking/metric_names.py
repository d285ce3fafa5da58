"""The names metrics get in MLflow: the loop's keys grouped by prefix, since MLflow's UI sections its charts by it.

    train/...        the outer loop: loss_after, accuracy_before, tasks_per_s, lr, update_norm, train_time_s ...
    pretrain/...     supervised pre-training before meta-training, per epoch (pretrain_* keys: loss, accuracy, epoch_s)
    heldout/...      evaluations during training (the loop's val_* keys)
    test/...         the final evaluation (test_*), with its 95% intervals (test/accuracy_after_ci95)
    distributed/...  what the distributed step source adds: workers, staleness, traffic, worker/<id>/tasks_per_s
    system/...       MLflow's own system metrics (system/<node>/... per task worker and the parameter server)

Only MLflow sees these names: the loop's history, the progress bar, `TrainResult` and the learning-curve plot keep
the loop's keys. `mlflow_name("val_accuracy_after") == "heldout/accuracy_after"`.

The outer learning rate goes in as `train/lr_milli`, in units of 1e-3 (MAML's Adam at 0.001 reads 1.0): MLflow
draws its charts with Plotly, which pads the y-axis of a constant series by ±1, so a constant 0.001 logged as is was
a flat line at 0 on an axis from -1 to 1; at 1.0 it is a line at 1 on an axis from 0 to 2, and a schedule's decay
from 1 to 0 reads as it is.
"""

from __future__ import annotations

GROUPS = ("train", "pretrain", "heldout", "test", "distributed", "system")
# Loop-key prefixes that say where a metric comes from (stripped: the group says it).
PREFIXES = {"val_": "heldout", "test_": "test", "pretrain_": "pretrain"}
# What metadist.distributed.stats.DistributedStats.close reports besides its per-worker worker/<id>/... figures
# (tests/test_distributed.py checks the two lists agree).
DISTRIBUTED_KEYS = frozenset({
    "workers", "worker_restarts", "recomputed_tasks", "dropped_stale_updates", "downweighted_updates",
    "timed_out_slices", "staleness_mean", "staleness_max", "bytes_per_step", "server_bytes_per_step",
    "reducer_bytes_per_step_max", "prefetch_hit_rate", "ps_apply_ms", "ps_round_trip_ms",
})  # fmt: skip
WORKER_PREFIX = "worker/"
# Loop key → (MLflow name, factor its values are multiplied by).
SCALED = {"lr": ("train/lr_milli", 1e3)}


def mlflow_name(key: str) -> str:
    """The MLflow metric name of a loop key; a name already in a group is kept."""
    if key in SCALED:
        return SCALED[key][0]
    group = key.split("/", 1)[0]
    if "/" in key and group in GROUPS:
        return key
    for prefix, group in PREFIXES.items():
        if key.startswith(prefix):
            return f"{group}/{key[len(prefix):]}"
    if key in DISTRIBUTED_KEYS or key.startswith(WORKER_PREFIX):
        return f"distributed/{key}"
    return f"train/{key}"


def mlflow_names(metrics: dict[str, float]) -> dict[str, float]:
    """Loop metrics as MLflow records them: renamed, and scaled where SCALED says (values as float)."""
    return {mlflow_name(k): float(v) * SCALED[k][1] if k in SCALED else float(v) for k, v in metrics.items()}
