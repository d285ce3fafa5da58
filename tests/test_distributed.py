"""Distributed meta-training on Ray: task workers and a parameter server, on tiny jobs (conv-4 with 8 filters).

One Ray instance serves the module (started on loopback with token authentication on, the token in the
environment so nothing is written to ~/.ray). Scenarios that need a cluster of their own run in a subprocess of
this file (`python -m tests.test_distributed SCENARIO ...`): elastic growth and node loss on a
`ray.cluster_utils.Cluster` (nodes added and removed by hand), the fake-multinode `AutoscalingCluster` (a job
submitted to its job server, whose worker pool grows when the autoscaler adds a node), and the command line killed
and resumed. `AutoscalingCluster` runs `ray stop --force`, which kills every Ray process on the
machine: its scenario runs in PID, mount and network namespaces of its own (`unshare`), where `ray stop` sees only
that scenario's processes; it is skipped where `unshare` is not allowed.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metadist.training import LocalTrainer
from metadist.core import checkpoint as ckpt_io
from tests.local_ray import auth_env, local_ray
from tests.helpers import missing_tool, starts, tiny_job

ray = pytest.importorskip("ray")

cluster = pytest.mark.cluster

# Comparing runs that sum the same numbers in a different order (slices vs one vmapped sum): without batch norm.
# Transductive batch norm over a 5-example support set is ill-conditioned (a channel's variance near zero), and
# there a 1e-8 difference in summation order grows to 1e-3 within a few steps, as it would between any two orders.
NO_BN = ("model.batch_norm=none",)
TWO_WORKERS = ("distributed.workers=2",)
REPO = Path(__file__).resolve().parent.parent
SCENARIO_TIMEOUT_S = 240


_auth_env = auth_env  # token authentication on, as Ray 2.60 has it by default


# -- without a cluster -----------------------------------------------------------------------------------------------
def test_every_distributed_figure_has_an_mlflow_group():
    from metadist.distributed.stats import DistributedStats
    from metadist.tracking.metric_names import DISTRIBUTED_KEYS

    stats = DistributedStats()
    stats.worker_tasks[0] = 4
    figures = stats.close(workers=1, restarts=0)
    assert set(figures) - {"worker/0/tasks_per_s"} == DISTRIBUTED_KEYS


def test_slices_cover_the_meta_batch_and_the_staleness_policies():
    from metadist.distributed import slice_bounds
    from metadist.distributed.parameter_server import AppliedSteps
    from metadist.distributed.async_steps import staleness_weight

    assert slice_bounds(32, 3) == [(0, 10), (10, 21), (21, 32)]
    assert slice_bounds(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert staleness_weight(1, 1, "drop") == 1.0 and staleness_weight(2, 1, "drop") is None
    assert staleness_weight(3, 1, "downweight") == pytest.approx(1 / 3)
    applied = AppliedSteps(2)
    for step in (3, 2, 5):
        applied.add(step)
    assert applied.below == 4 and 5 in applied and 4 not in applied and 0 in applied


def test_flat_updates_round_trip_and_sum_in_a_fixed_order_equal_to_a_plain_sum():
    from metadist.algorithms.base import Update
    from metadist.distributed.flat import FlatUpdate, ParamLayout, group_bounds, sum_in_order

    gen = torch.Generator().manual_seed(0)
    shapes = {"conv.weight": (4, 1, 3, 3), "conv.bias": (4,), "head.weight": (5, 4)}
    updates = [Update("gradient", {k: torch.randn(shape, generator=gen) for k, shape in shapes.items()}, 2,
                      {"loss_after": float(i)}) for i in range(5)]
    layout = ParamLayout.of(updates[0].tensors)
    flat = [FlatUpdate.of(u, layout) for u in updates]
    assert flat[0].buffer.dtype == np.float32 and flat[0].buffer.flags.c_contiguous and layout.numel == 36 + 4 + 20
    for k, v in flat[0].to_update(layout).tensors.items():
        assert torch.equal(v, updates[0].tensors[k]) and v.shape == shapes[k]
    # The whole sum, in slice order, is the same bits as adding the tensors one after another.
    plain = updates[0]
    for u in updates[1:]:
        plain = plain + u
    total = sum_in_order(flat).to_update(layout)
    assert total.num_tasks == 10 and total.metrics["loss_after"] == 10.0
    for k in shapes:
        assert torch.equal(total.tensors[k], plain.tensors[k])
    # Grouped (two reducers): fixed by the slice and reducer counts, so any worker count gives these same bits.
    groups = group_bounds(5, 2)
    assert [list(g) for g in groups] == [[0, 1], [2, 3, 4]]
    grouped = sum_in_order([sum_in_order([flat[j] for j in g]) for g in groups]).to_update(layout)
    for k in shapes:
        torch.testing.assert_close(grouped.tensors[k], plain.tensors[k])
    again = sum_in_order([sum_in_order([flat[j] for j in g]) for g in groups]).to_update(layout)
    assert all(torch.equal(again.tensors[k], grouped.tensors[k]) for k in shapes)


def test_workers_and_address_flags_and_distributed_settings_are_validated(capsys):
    from metadist.cli import main
    from metadist.config import apply_overrides
    from metadist.config import JobConfig
    from metadist.errors import ConfigError

    assert main(["train", "--print-config", "--workers", "3", "--address", "127.0.0.1:6379"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["distributed"]
    assert printed["workers"] == 3 and printed["address"] == "127.0.0.1:6379" and printed["mode"] == "sync"
    with pytest.raises(ConfigError, match=r"distributed.slices = 5 .* exceeds train.meta_batch = 4"):
        apply_overrides(JobConfig(), ["train.meta_batch=4", "distributed.workers=5"])
    with pytest.raises(ConfigError, match="distributed.mode: Input should be 'sync' or 'async'"):
        apply_overrides(JobConfig(), ["distributed.mode=hogwild"])
    with pytest.raises(ConfigError, match="min_workers = 3 exceeds workers = 2"):
        apply_overrides(JobConfig(), ["distributed.workers=2", "distributed.min_workers=3"])


# -- one Ray for the module ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
@starts("cluster")
def ray_cluster():
    # Three CPU slots: two workers, and room for a replacement while a killed one is being cleaned up.
    with local_ray(num_cpus=3) as connection:
        yield connection


def _params(uri: str) -> dict[str, torch.Tensor]:
    return ckpt_io.load(uri).meta_params


def _assert_same(a: dict, b: dict, *, exact: bool = True, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=atol, msg=k)


@pytest.fixture(scope="module")
def undisturbed(ray_cluster, small1_uri, small2_uri, tmp_path_factory):
    """The reference: 8 synchronous steps on two workers, nothing killed."""
    from metadist.distributed import DistributedTrainer

    tmp = tmp_path_factory.mktemp("undisturbed")
    tracked = tiny_job(small1_uri, small2_uri, tmp, "train.steps=8", *TWO_WORKERS, "tracking.enabled=true",
                       f"tracking.uri=sqlite:///{tmp}/mlflow.db", "tracking.log_model=false",
                       "tracking.log_checkpoint_models=false")
    # System metrics every second (MLflow's default is 10 s): the run lasts a few seconds.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
        result = DistributedTrainer(tracked, progress=False).run()
    job = tracked.model_copy(update={"tracking": tracked.tracking.model_copy(update={"enabled": False})})
    return {"job": job, "tracked": tracked, "result": result, "params": _params(result.checkpoint_uri)}


# -- synchronous mode ------------------------------------------------------------------------------------------------
@cluster
def test_sync_run_equals_the_local_trainer(ray_cluster, small1_uri, small2_uri, tmp_path):
    from metadist.distributed import DistributedTrainer

    local = LocalTrainer(tiny_job(small1_uri, small2_uri, tmp_path / "local", *NO_BN), progress=False).run()
    dist = DistributedTrainer(tiny_job(small1_uri, small2_uri, tmp_path / "dist", *NO_BN, *TWO_WORKERS), progress=False).run()
    assert dist.steps == dist.applied_steps == local.applied_steps == 6
    # Two slices summed vs one vmapped sum over all tasks: equal up to float summation order.
    _assert_same(_params(local.checkpoint_uri), _params(dist.checkpoint_uri), exact=False, atol=1e-6)
    for a, b in zip(local.history, dist.history, strict=True):
        assert a["step"] == b["step"]
        for key in ("loss_after", "accuracy_after", "loss_before", "accuracy_before"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
        assert b["workers"] == 2 and b["staleness_max"] == 0 and b["bytes_per_step"] > 0 and b["ps_apply_ms"] > 0
        assert b["worker/0/tasks_per_s"] > 0 and b["worker/1/tasks_per_s"] > 0
    assert dist.test.keys() == local.test.keys()
    # One slice: the same vmapped call as the local trainer's, so the same bits, Adam and all.
    adam_local = LocalTrainer(tiny_job(small1_uri, small2_uri, tmp_path / "adam"), progress=False).run()
    one_slice = tiny_job(small1_uri, small2_uri, tmp_path / "one", *TWO_WORKERS, "distributed.slices=1")
    _assert_same(_params(adam_local.checkpoint_uri), _params(DistributedTrainer(one_slice, progress=False).run().checkpoint_uri))


@cluster
def test_one_mlflow_run_records_workers_staleness_traffic_and_latency(undisturbed):
    from mlflow import MlflowClient

    job, result = undisturbed["tracked"], undisturbed["result"]
    client = MlflowClient(job.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["distributed.workers"] == "2"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    for key in ("train/loss_after", "train/tasks_per_s", "distributed/workers", "distributed/worker_restarts",
                "distributed/staleness_max", "distributed/bytes_per_step", "distributed/ps_apply_ms",
                "distributed/worker/0/tasks_per_s", "distributed/worker/1/tasks_per_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [2, 4, 6, 8], key
    # MLflow's system metrics from each task worker and the parameter server, under their node ids.
    for node in ("worker-0", "worker-1", "parameter-server"):
        for metric in ("cpu_utilization_percentage", "system_memory_usage_megabytes"):
            assert client.get_metric_history(run.info.run_id, f"system/{node}/{metric}"), (node, metric)
    history = result.history
    # Per step: the one reducer (one node) takes in the two slices' updates, the server one partial sum, and each
    # worker fetches each version's parameters once.
    param_bytes = sum(v.numel() * v.element_size() for v in undisturbed["params"].values())
    lines = [h for h in history if "bytes_per_step" in h]
    assert all(h["server_bytes_per_step"] == param_bytes and h["reducer_bytes_per_step_max"] == 2 * param_bytes for h in lines)
    assert all(h["bytes_per_step"] == 3 * param_bytes for h in lines)
    assert lines[-1]["prefetch_hit_rate"] >= 0.5  # from step 1 on each worker gets the slice it sampled ahead


@cluster
def test_killed_workers_cost_only_their_tasks_and_no_step_is_applied_twice(undisturbed, small1_uri, small2_uri, tmp_path, monkeypatch):
    from metadist.distributed import DistributedTrainer

    trainer = DistributedTrainer(undisturbed["job"].model_copy(update={"checkpoint": undisturbed["job"].checkpoint.model_copy(
        update={"uri": str(tmp_path / "ckpt")})}), progress=False)
    compute = trainer.source.schedule.compute_slices
    killed = []

    def chaos(step, bounds, with_before):
        if step in (1, 3, 4, 6):  # kill a live worker just before its tasks are handed out: they are lost in flight
            victim = trainer.group.live_workers()[0]
            ray.kill(victim.actor)
            killed.append(victim.worker_id)
        return compute(step, bounds, with_before)

    monkeypatch.setattr(trainer.source.schedule, "compute_slices", chaos)
    result = trainer.run()
    assert len(killed) == 4 and trainer.worker_restarts == 4
    assert result.steps == result.applied_steps == 8  # the server counts every apply: none twice, none lost
    assert result.history[-1]["recomputed_tasks"] > 0 and result.history[-1]["worker_restarts"] == 4
    # Slices are summed in their order whoever computed them: the same bits as the undisturbed run.
    _assert_same(undisturbed["params"], _params(result.checkpoint_uri))


def _with_checkpoints_in(job, folder: Path, *sets: str):
    from metadist.config import apply_overrides

    return apply_overrides(job, [f"checkpoint.uri={folder}", *sets])


def _trouble_once(worker, trouble) -> None:
    """Run in a worker (through __ray_call__): its next compute_update first calls trouble() (raise, hang), once."""
    original = worker.learner.compute_update

    def troubled(*args, **kwargs):
        worker.learner.compute_update = original
        trouble()
        return original(*args, **kwargs)

    worker.learner.compute_update = troubled


def _out_of_memory() -> None:
    raise RuntimeError("CUDA out of memory")


def _sabotage_once(trainer, make_trouble) -> list:
    """After the workers are up, call make_trouble(worker slot) once, on the first live worker; returns its slot."""
    started = trainer.source.group.start
    victims: list = []

    def start():
        started()
        victims.append(trainer.source.group.live_workers()[0])
        make_trouble(victims[0])

    trainer.source.group.start = start
    return victims


@cluster
def test_killed_parameter_server_is_restarted_within_the_run_and_ends_on_the_same_parameters(undisturbed, tmp_path):
    from metadist.distributed import DistributedTrainer

    job = _with_checkpoints_in(undisturbed["job"], tmp_path / "ckpt")
    trainer = DistributedTrainer(job, progress=False)
    apply = trainer.source.server.apply
    killed = []

    def kill_server_once_at_step_5(step, weight, update_refs):
        if step == 5 and not killed:
            killed.append(step)
            ray.kill(trainer.source.server.actor)
        return apply(step, weight, update_refs)

    trainer.source.server.apply = kill_server_once_at_step_5
    result = trainer.run()
    assert killed == [5] and trainer.source.server.restarts == 1
    assert result.steps == result.applied_steps == 8  # steps 3 and 4 were applied again, not counted again
    assert result.history[-1]["recomputed_tasks"] >= 2 * job.train.meta_batch
    _assert_same(undisturbed["params"], _params(result.checkpoint_uri))


@cluster
def test_a_parameter_server_lost_past_its_restarts_fails_naming_the_resume_and_resumes_to_the_same_parameters(undisturbed, tmp_path):
    from metadist.distributed import DistributedTrainer, ParameterServerLost

    job = _with_checkpoints_in(undisturbed["job"], tmp_path / "ckpt", "distributed.server_restarts=0")
    trainer = DistributedTrainer(job, progress=False)
    apply = trainer.source.server.apply

    def kill_server_at_step_5(step, weight, update_refs):
        if step == 5:
            ray.kill(trainer.source.server.actor)
        return apply(step, weight, update_refs)

    trainer.source.server.apply = kill_server_at_step_5
    with pytest.raises(ParameterServerLost, match="--resume"):
        trainer.run()
    assert [s for s, _ in ckpt_io.run_checkpoints(job.checkpoint.uri)] == [3]
    resumed = DistributedTrainer(job, resume=True, progress=False)
    assert resumed.step == 3
    result = resumed.run()
    assert result.steps == result.applied_steps == 8
    _assert_same(undisturbed["params"], _params(result.checkpoint_uri))
    # The same checkpoint format as the local trainer's: it resumes (and evaluates) from it too.
    local = LocalTrainer(job.model_copy(update={"distributed": job.distributed.model_copy(update={"workers": 0})}),
                         resume=result.checkpoint_uri, progress=False)
    assert local.step == 8 and local.optimizer.step_count == 8


@cluster
def test_a_worker_that_raises_is_replaced_and_its_slice_retried(undisturbed, tmp_path):
    from metadist.distributed import DistributedTrainer

    trainer = DistributedTrainer(_with_checkpoints_in(undisturbed["job"], tmp_path / "ckpt"), progress=False)
    victims = _sabotage_once(trainer, lambda slot: ray.get(slot.actor.__ray_call__.remote(_trouble_once, _out_of_memory)))
    result = trainer.run()
    assert len(victims) == 1 and trainer.worker_restarts == 1
    assert result.steps == result.applied_steps == 8
    _assert_same(undisturbed["params"], _params(result.checkpoint_uri))


@cluster
def test_a_worker_that_keeps_raising_fails_the_run_naming_its_node_and_error(undisturbed, tmp_path):
    from metadist.distributed import DistributedTrainer
    from metadist.distributed.failures import SliceFailed

    def always_out_of_memory(worker):
        def boom(*args, **kwargs):
            raise RuntimeError("CUDA out of memory")

        worker.learner.compute_update = boom

    job = _with_checkpoints_in(undisturbed["job"], tmp_path / "ckpt", "distributed.slice_retries=0")
    trainer = DistributedTrainer(job, progress=False)
    _sabotage_once(trainer, lambda slot: ray.get(slot.actor.__ray_call__.remote(always_out_of_memory)))
    with pytest.raises(SliceFailed, match=r"task worker \d+ on node \w+ raised RuntimeError: CUDA out of memory"):
        trainer.run()


@cluster
def test_a_pretrained_distributed_run_equals_the_local_one(ray_cluster, small1_uri, small2_uri, tmp_path):
    """Pre-training runs once, in the driver; the parameter server starts meta-training from its weights."""
    from metadist.distributed import DistributedTrainer

    pretrained = ("pretrain.epochs=1", "train.steps=3")
    local = LocalTrainer(tiny_job(small1_uri, small2_uri, tmp_path / "local", *pretrained), progress=False).run()
    one_slice = tiny_job(small1_uri, small2_uri, tmp_path / "dist", *pretrained, *TWO_WORKERS, "distributed.slices=1")
    dist = DistributedTrainer(one_slice, progress=False).run()
    assert dist.steps == dist.applied_steps == 3
    _assert_same(_params(local.checkpoint_uri), _params(dist.checkpoint_uri))


@cluster
def test_variable_way_variable_shot_runs_are_the_same_at_any_worker_count(ray_cluster, small1_uri, small2_uri, tmp_path):
    """Each step's episode shape is drawn from (seed, step) alone: every worker's slice stacks into it."""
    from metadist.distributed import DistributedTrainer

    # SGD, not Adam: ProtoNet's distances ignore the last bias, whose gradient is float noise that Adam would
    # normalise into full steps (of a sign that depends on the summation order of the two slices).
    variable = ("algorithm.name=protonet", "data.episode.ways=8", "data.episode.shots=3",
                "data.episode.variable={min_ways: 3}", "train.steps=4", "optimizer.name=sgd", "optimizer.lr=0.1", *NO_BN)
    local = LocalTrainer(tiny_job(small1_uri, small2_uri, tmp_path / "local", *variable), progress=False).run()
    dist = DistributedTrainer(tiny_job(small1_uri, small2_uri, tmp_path / "dist", *variable, *TWO_WORKERS),
                              progress=False).run()
    assert dist.steps == dist.applied_steps == 4
    _assert_same(_params(local.checkpoint_uri), _params(dist.checkpoint_uri), exact=False, atol=1e-6)


@cluster
def test_bf16_workers_send_their_updates_in_half_the_bytes(ray_cluster, small1_uri, small2_uri, tmp_path):
    from metadist.distributed import DistributedTrainer

    sent = {}
    for precision in ("fp32", "bf16"):
        job = tiny_job(small1_uri, small2_uri, tmp_path / precision, "train.steps=3", "train.log_every=1", *TWO_WORKERS,
                       "distributed.reducers=1", f"train.precision={precision}")
        result = DistributedTrainer(job, progress=False).run()
        assert result.steps == result.applied_steps == 3
        sent[precision] = result.history[-1]["reducer_bytes_per_step_max"]
    assert sent["bf16"] * 2 == sent["fp32"] > 0


@cluster
def test_a_hung_worker_does_not_stall_the_run_and_the_step_count_is_exact(undisturbed, tmp_path):
    from metadist.distributed import DistributedTrainer

    def hang() -> None:
        time.sleep(300)  # far past the deadline: the slice goes elsewhere, this worker is replaced

    job = _with_checkpoints_in(undisturbed["job"], tmp_path / "ckpt", "distributed.slice_timeout_s=5")
    trainer = DistributedTrainer(job, progress=False)
    _sabotage_once(trainer, lambda slot: ray.get(slot.actor.__ray_call__.remote(_trouble_once, hang)))
    started = time.monotonic()
    result = trainer.run()
    assert time.monotonic() - started < 120
    assert result.steps == result.applied_steps == 8 and trainer.worker_restarts == 1
    assert result.history[-1]["timed_out_slices"] == 1
    _assert_same(undisturbed["params"], _params(result.checkpoint_uri))


# -- asynchronous mode -----------------------------------------------------------------------------------------------
@cluster
def test_async_applies_every_step_once_within_the_default_staleness_bound(ray_cluster, small1_uri, small2_uri, tmp_path):
    from metadist.distributed import DistributedTrainer

    job = tiny_job(small1_uri, small2_uri, tmp_path, "train.steps=8", "train.log_every=1", *TWO_WORKERS, "distributed.mode=async")
    assert job.distributed.staleness_bound() == 1  # workers - 1
    result = DistributedTrainer(job, progress=False).run()
    assert result.steps == result.applied_steps == 8
    assert max(h["staleness_max"] for h in result.history) <= 1
    last = result.history[-1]  # a dropped update's step was computed again, and counted
    assert last["recomputed_tasks"] == last["dropped_stale_updates"] * job.train.meta_batch


def test_async_dispatch_is_held_only_for_a_straggler_at_the_staleness_bound():
    from metadist.distributed.async_steps import DispatchGate

    gate = DispatchGate(bound=3, workers=4)
    assert not gate.holds(None, 0.0)  # nothing in flight
    assert not gate.holds(2, 10.0)  # below the bound: a new step cannot push it past S
    assert gate.holds(3, 0.01)  # at the bound while start-up times are still unknown: wait for it
    for seconds in (0.25, 0.26, 0.25, 0.24):
        gate.finished(seconds)
    assert gate.typical_s() == pytest.approx(0.25)
    # The steady state with W = 4: the oldest is W - 1 behind and three quarters through its step; it arrives first.
    assert not gate.holds(3, 0.19)
    assert gate.holds(3, 0.3)  # a straggler: a new step could overtake it


@cluster
def test_async_workers_overlap(ray_cluster, small1_uri, small2_uri, tmp_path):
    """At a fixed compute time per step (0.5 s, a sleep in each worker), two async workers apply steps faster than
    one: the second worker's steps overlap the first's instead of waiting for them."""
    from metadist.distributed import DistributedTrainer

    def fixed_compute_time(worker):
        original = worker.learner.compute_update

        def slow(*args, **kwargs):
            time.sleep(0.5)
            return original(*args, **kwargs)

        worker.learner.compute_update = slow

    def run(workers: int) -> float:
        job = tiny_job(small1_uri, small2_uri, tmp_path / str(workers), "train.steps=8", "train.log_every=8",
                       f"distributed.workers={workers}", "distributed.mode=async")
        trainer = DistributedTrainer(job, progress=False)
        started = trainer.source.group.start

        def start():
            started()
            for slot in trainer.source.group.live_workers():
                ray.get(slot.actor.__ray_call__.remote(fixed_compute_time))

        trainer.source.group.start = start
        result = trainer.run()
        assert result.applied_steps == 8
        return result.history[0]["tasks_per_s"]

    one, two = run(1), run(2)
    assert two > 1.3 * one, (one, two)


def test_stale_updates_shorten_the_step_not_the_gradient():
    """Under Adam a gradient scaled by w gives (almost) the same step; the step itself must shrink by w."""
    from metadist.algorithms.base import Update
    from metadist.algorithms.outer import MetaOptimizer
    from metadist.config import OptimizerConfig

    def moved(step_scale: float) -> float:
        opt = MetaOptimizer({"w": torch.zeros(3)}, OptimizerConfig(lr=0.1, clip_norm=None), total_steps=10)
        opt.apply(Update("gradient", {"w": torch.tensor([1.0, -2.0, 3.0])}, num_tasks=1), step_scale=step_scale)
        return float(opt.meta_params()["w"].abs().sum())

    assert moved(0.25) == pytest.approx(0.25 * moved(1.0))


def test_a_dead_address_fails_at_once_naming_it():
    import socket

    from metadist.config import DistributedConfig
    from metadist.distributed import ClusterError
    from metadist.distributed.cluster import check_reachable

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ClusterError, match=rf"distributed.address '127.0.0.1:{port}': nothing answers there"):
        check_reachable(f"127.0.0.1:{port}", DistributedConfig().start_timeout_s)
    assert time.monotonic() - started < 5
    with pytest.raises(ClusterError, match="expected HOST:PORT"):
        check_reachable("head-node", 300)


def test_gpu_settings_that_cannot_work_are_refused_naming_the_field():
    from metadist.config import JobConfig, apply_overrides
    from metadist.errors import ConfigError

    with pytest.raises(ConfigError, match=r"distributed.gpus_per_worker: .*fraction of one GPU or whole GPUs \(got 1.5\)"):
        apply_overrides(JobConfig(), ["distributed.workers=2", "distributed.gpus_per_worker=1.5"])
    with pytest.raises(ConfigError, match=r"train.device = 'cuda:1' with distributed.workers = 2"):
        apply_overrides(JobConfig(), ["distributed.workers=2", "train.device=cuda:1"])
    with pytest.raises(ConfigError, match=r"gpus_per_worker = 0"):
        apply_overrides(JobConfig(), ["distributed.workers=2", "train.device=cuda", "distributed.gpus_per_worker=0"])
    apply_overrides(JobConfig(), ["distributed.workers=2", "train.device=cuda:1", "distributed.gpus_per_worker=2"])
    apply_overrides(JobConfig(), ["distributed.workers=4", "distributed.gpus_per_worker=0.5"])


def test_gpu_requests_follow_the_device_setting_and_the_cluster():
    from metadist.config import DistributedConfig, TrainConfig
    from metadist.distributed.resources import ClusterGPUs, worker_resources

    none, now, addable = ClusterGPUs(0, 0), ClusterGPUs(4, 0), ClusterGPUs(0, 8)
    dist = DistributedConfig(workers=2)

    def gpus(device: str, cluster: ClusterGPUs, config: DistributedConfig = dist) -> float:
        return worker_resources(config, TrainConfig(device=device), cluster).num_gpus

    assert gpus("cuda", none) == 1  # asked for whatever the cluster has: the autoscaler adds GPU nodes for it
    assert gpus("cpu", now) == 0
    assert gpus("auto", now) == 1 and gpus("auto", addable) == 1 and gpus("auto", none) == 0
    assert gpus("auto", none, DistributedConfig(workers=2, gpus_per_worker=0.25)) == 0.25
    assert "autoscaler can add GPU nodes" in worker_resources(dist, TrainConfig(), addable).reason


def test_a_worker_trains_on_the_gpu_ray_gave_it_or_says_why_it_cannot():
    from metadist.distributed.worker import worker_device

    assert str(worker_device("auto", ["3"], cuda_available=True)) == "cuda:0"  # CUDA_VISIBLE_DEVICES=3: it is cuda:0
    assert str(worker_device("auto", [], cuda_available=True)) == "cpu"
    assert str(worker_device("auto", ["0"], cuda_available=False)) == "cpu"
    assert str(worker_device("cpu", ["0"], cuda_available=True)) == "cpu"
    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        worker_device("cuda", ["0"], cuda_available=False)
    with pytest.raises(RuntimeError, match="Ray gave it no GPU"):
        worker_device("cuda", [], cuda_available=True)


# -- scenarios with a cluster of their own (subprocesses) ------------------------------------------------------------
def _scenario(name: str, tmp_path: Path, small1_uri: str, small2_uri: str, env: dict | None = None,
              unset: tuple[str, ...] = (), wrapper: tuple[str, ...] = ()) -> dict:
    out = tmp_path / f"{name}.json"
    environment = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    proc = subprocess.run(
        [*wrapper, sys.executable, "-m", "tests.test_distributed", name, str(tmp_path), small1_uri, small2_uri],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S,
    )
    assert proc.returncode == 0 and out.exists(), proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(out.read_text())


@cluster
@pytest.mark.slow
def test_elastic_run_folds_in_added_nodes_and_survives_a_lost_one(small1_uri, small2_uri, tmp_path):
    report = _scenario("elastic", tmp_path, small1_uri, small2_uri, env=_auth_env())
    workers = report["workers"]  # live workers at each step's log line
    assert workers[0] == 1 and max(workers) == 3 and workers[-1] == 1, workers
    assert report["steps"] == report["applied_steps"] == 12 and report["restarts"] == 2
    # The meta-batch means the same at any size: the run still equals the local trainer's.
    local = LocalTrainer(tiny_job(small1_uri, small2_uri, tmp_path / "local", *ELASTIC), progress=False).run()
    _assert_same(_params(local.checkpoint_uri), _params(report["checkpoint"]), exact=False, atol=1e-6)


@cluster
@pytest.mark.slow
def test_cli_killed_driver_resumes_with_token_auth_to_the_same_parameters(undisturbed, small1_uri, small2_uri, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    # Ray 2.60's defaults, untouched: token auth on, a token generated into ~/.ray/auth_token (a private HOME here).
    report = _scenario("cli_resume", tmp_path, small1_uri, small2_uri, env={"HOME": str(home)},
                       unset=("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS"))
    assert report["killed_after_checkpoint"] == 3
    assert (home / ".ray" / "auth_token").is_file()
    assert "checkpoint:" in report["stdout"]
    _assert_same(undisturbed["params"], _params(report["checkpoint"]))


@cluster
def test_sigterm_to_the_driver_saves_a_checkpoint_and_exits_143(small1_uri, small2_uri, tmp_path):
    report = _scenario("cli_sigterm", tmp_path, small1_uri, small2_uri, env=_auth_env())
    assert report["returncode"] == 143, report["output"]
    assert "Terminated at step" in report["output"] and "Traceback" not in report["output"], report["output"]
    saved_at = int(report["output"].split("Terminated at step ")[1].split(";")[0])
    assert report["steps"][-1] == saved_at and saved_at > 3, report
    assert report["locks"] == []


@cluster
@pytest.mark.slow
def test_two_nodes_any_worker_count_gives_the_same_bits(small1_uri, small2_uri, tmp_path):
    report = _scenario("two_nodes", tmp_path, small1_uri, small2_uri, env=_auth_env())
    first = _params(report["checkpoints"]["1"])
    for workers, uri in report["checkpoints"].items():
        _assert_same(first, _params(uri))  # 1, 2, 3 and 5 workers: the same slices and reducers, the same bits
    assert report["server_bytes"] == {w: 2 * report["param_bytes"] for w in report["checkpoints"]}  # two reducers


@cluster
@pytest.mark.slow
def test_workers_ask_for_and_get_the_gpus_ray_declares(small1_uri, small2_uri, tmp_path):
    report = _scenario("declared_gpus", tmp_path, small1_uri, small2_uri, env=_auth_env())
    auto = report["auto"]  # the cluster declares 2 GPUs: each of 2 workers asks for one and gets its own
    assert auto["asked"] == 1.0 and sorted(w["gpu_ids"] for w in auto["workers"]) == [["0"], ["1"]]
    assert sorted(w["cuda_visible_devices"] for w in auto["workers"]) == ["0", "1"]
    assert all(w["device"] == "cpu" for w in auto["workers"])  # this torch has no CUDA: 'auto' falls back, and says so
    shared = report["shared"]  # 0.5 each: four workers on two GPUs, two to a GPU
    assert shared["asked"] == 0.5 and sorted(w["cuda_visible_devices"] for w in shared["workers"]) == ["0", "0", "1", "1"]
    assert report["cpu"]["asked"] == 0.0 and all(w["gpu_ids"] == [] for w in report["cpu"]["workers"])
    assert "torch sees no CUDA device" in report["cuda"]  # train.device: cuda that cannot be honoured fails at start


# A PID, mount and network namespace of its own: `ray stop --force` there sees only this scenario's processes, Ray's
# session files go to a private /tmp/ray, and every socket is on the namespace's own loopback.
ISOLATED = ("unshare", "--pid", "--fork", "--mount-proc", "--net", "sh", "-c",
            'ip link set lo up && mkdir -p /tmp/ray && mount -t tmpfs tmpfs /tmp/ray && exec "$@"', "isolated")


def _can_isolate() -> bool:
    try:
        return subprocess.run([*ISOLATED, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@cluster
@pytest.mark.server  # the job is submitted to the cluster's job server
@pytest.mark.slow
def test_autoscaler_adds_a_node_while_a_submitted_job_runs_and_the_jobs_worker_pool_grows(small1_uri, small2_uri,
                                                                                           tmp_path):
    if not _can_isolate():
        missing_tool("needs unshare (root) to keep the autoscaler's `ray stop --force` in a namespace of its own")
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"  # `ray` and `metadist` of this environment
    report = _scenario("autoscaling", tmp_path, small1_uri, small2_uri, env={**_auth_env(), "PATH": path}, wrapper=ISOLATED)
    assert report["status"] == "SUCCEEDED", f"{report['message']}\n{report['log'][-4000:]}"
    # `metadist train --workers 2`, run by Ray Jobs: worker 0 fits on the 1-CPU head at once, a pool of one; worker 1
    # waits in Ray's queue, which is the demand the autoscaler scales on; it launches a node, worker 1 comes up there
    # and the pool is two. The job waited for it (min_workers: all), so the order does not depend on timing.
    assert report["joined"] == [[0, 1], [1, 2]], report["log"][-4000:]
    assert report["autoscaler_adds"] == ["Adding 1 node(s) of type ray.worker.cpu."], report["autoscaler_adds"]
    [head] = [n for n in report["nodes"] if n["head"]]
    [launched] = [n for n in report["nodes"] if not n["head"]]
    assert report["started_ms"] < launched["started_ms"] < report["ended_ms"], "the node was not added while the job ran"
    assert sorted(w["node"] for w in report["task_workers"]) == sorted([head["id"], launched["id"]]), report
    # The job's own record: training started once the pool had grown, with two live workers at every step.
    assert report["log"].index("; 2 live") < report["log"].index("step 1/8")
    assert report["workers"] == [2] * 8
    assert report["steps"] == report["applied_steps"] == 8


# -- the scenarios, run as `python -m tests.test_distributed NAME TMP SMALL1 SMALL2` --------------------------------
ELASTIC = (*NO_BN, "train.steps=12", "train.log_every=1", "train.meta_batch=6", "distributed.workers=3",
           "distributed.min_workers=1", "distributed.slices=3", "checkpoint.every=0")


def _elastic(tmp: Path, small1_uri: str, small2_uri: str) -> dict:
    """A one-CPU head node; a two-CPU node joins before step 3 and is removed before step 8."""
    from ray.cluster_utils import Cluster

    from metadist.distributed import DistributedTrainer
    from metadist.distributed.ray_internals import loopback_only

    loopback_only()
    fast_failure_detection = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False, "_system_config": fast_failure_detection})
    # The cluster runs with token auth (RAY_AUTH_MODE=token in its processes' environment). Joining by address,
    # Ray enables token mode only when told: metadist's `connect` does, having a token ($RAY_AUTH_TOKEN) at hand.
    assert os.environ.pop("RAY_AUTH_MODE") == "token"
    job = tiny_job(small1_uri, small2_uri, tmp / "elastic", *ELASTIC, f"distributed.address={cluster.address}")
    trainer = DistributedTrainer(job, progress=False)
    assert trainer.connection.auth_mode == "token" and not trainer.connection.started_here
    compute = trainer.source.schedule.compute_slices
    nodes = []

    def grow_then_shrink(step, bounds, with_before):
        if step == 3:  # a node joins; hold the step until the two waiting workers were placed on it
            nodes.append(cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1"))
            deadline = time.monotonic() + SCENARIO_TIMEOUT_S / 2
            while len(trainer.group.live) < 3 and time.monotonic() < deadline:
                trainer.group.poll(timeout_s=0.5)
        if step == 8:  # the node is lost with its workers and their in-flight slices
            cluster.remove_node(nodes.pop())
        return compute(step, bounds, with_before)

    trainer.source.schedule.compute_slices = grow_then_shrink
    run = trainer.run()
    ray.shutdown()
    cluster.shutdown()
    return {"workers": [h["workers"] for h in run.history if "workers" in h], "steps": run.steps,
            "applied_steps": run.applied_steps, "restarts": trainer.worker_restarts, "checkpoint": run.checkpoint_uri}


# Ray 2.60's wheel lacks autoscaler/_private/fake_multi_node/example.yaml, which AutoscalingCluster reads: its
# settings are supplied here.
FAKE_MULTINODE = {
    "cluster_name": "metadist-test", "max_workers": 1, "head_node_type": "ray.head.default",
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "upscaling_speed": 1.0, "idle_timeout_minutes": 5, "auth": {}, "docker": {}, "file_mounts": {},
    "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
    "head_start_ray_commands": [], "worker_start_ray_commands": [],
}


def _autoscaling(tmp: Path, small1_uri: str, small2_uri: str) -> dict:
    """A 1-CPU head (whose dashboard is the job server) and an autoscaler that may launch one 1-CPU node. A tiny job
    asking for two workers is submitted through the job server as `metadist submit` does; one worker fits on the
    head, the other waits until the autoscaler has launched a node for it. The report: the job's log, status and
    times, its history (from its final checkpoint), the cluster's nodes, where the task workers ran, and the
    autoscaler's launches."""
    import copy
    import dataclasses
    import re

    from ray.cluster_utils import AutoscalingCluster
    from ray.util.state import list_actors, list_nodes

    from metadist.distributed.ray_internals import loopback_only
    from metadist.submission import JobServer, prepare_submission

    class FakeMultinodeCluster(AutoscalingCluster):
        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
            config = copy.deepcopy(FAKE_MULTINODE)
            head = {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}
            config["available_node_types"] = {**worker_node_types, "ray.head.default": head}
            config.update(config_kwargs)
            return config

    loopback_only()
    workdir, checkpoints = tmp / "autoscaling-job", tmp / "autoscaling" / "ckpt"
    workdir.mkdir()
    job = tiny_job(small1_uri, small2_uri, tmp / "autoscaling", "name=autoscaling", "train.steps=8",
                   "train.log_every=1", "checkpoint.every=0", "distributed.start_timeout_s=120")
    (workdir / "job.yaml").write_text(yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False))
    # `metadist submit job.yaml --workers 2`, built as the command builds it. The job waits for both workers
    # (distributed.min_workers unset: all of them) before its first step, so the pool grows while the job runs
    # whatever the timing. One change: its working directory is used in place (`local://`) instead of uploaded.
    # Fake-multinode nodes share the head's session folder on this one machine, and a node that sets up an
    # uploaded working directory unpacks it afresh (overwrite=True), deleting the copy the head's processes (the
    # job's driver, worker 0) run in; on a real cluster each node has its own.
    submission = prepare_submission(job, workdir / "job.yaml", workers=2, working_dir=workdir,
                                    submission_id=f"autoscaling-{secrets.token_hex(3)}")
    runtime_env = {k: v for k, v in submission.runtime_env.items() if k not in ("working_dir", "excludes")}
    submission = dataclasses.replace(submission, runtime_env={**runtime_env, "working_dir": f"local://{workdir}"})
    cluster = FakeMultinodeCluster(head_resources={"CPU": 1}, worker_node_types={
        "ray.worker.cpu": {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1}})
    cluster.start()  # `ray start --head`: with the dashboard, and so the job server, on 127.0.0.1:8265
    try:
        context = ray.init(address="auto", logging_level="WARNING")
        assert context.dashboard_url.startswith("127.0.0.1:"), context.dashboard_url
        server = JobServer(f"http://{context.dashboard_url}")
        server.submit(submission)
        chunks: list[str] = []
        info = server.follow(submission.submission_id, write=chunks.append)
        nodes = [{"id": n.node_id, "head": n.is_head_node, "started_ms": n.start_time_ms}
                 for n in list_nodes(detail=True) if n.state == "ALIVE"]
        workers = [{"node": a.node_id, "state": a.state} for a in
                   list_actors(filters=[("class_name", "=", "TaskWorker")], detail=True)]
        ray.shutdown()
        logs = Path("/tmp/ray/session_latest/logs")  # the namespace's private /tmp/ray
        autoscaler = "".join(f.read_text(errors="replace") for f in logs.glob("monitor.*"))
    finally:
        cluster.shutdown()  # `ray stop --force`: only this namespace's processes
    out = "".join(chunks)
    report = {"status": str(info.status), "message": info.message, "log": out, "started_ms": info.start_time,
              "ended_ms": info.end_time, "nodes": nodes, "task_workers": workers,
              "joined": [[int(w), int(live)] for w, live in
                         re.findall(r"task worker (\d+) up on node \w+ .*; (\d+) live", out)],
              "autoscaler_adds": sorted(set(re.findall(r"Adding \d+ node\(s\) of type [\w.]+\.", autoscaler)))}
    if report["status"] == "SUCCEEDED":  # the job's own record of its run: the history in its final checkpoint
        saved = ckpt_io.load(str(checkpoints))
        report.update(workers=[h["workers"] for h in saved.loop.history if "workers" in h], steps=saved.step,
                      applied_steps=saved.applied_steps)
    return report


def _two_nodes(tmp: Path, small1_uri: str, small2_uri: str) -> dict:
    """Two 3-CPU nodes on loopback; the same 5-slice, 2-reducer job with 1, 2, 3 and 5 workers."""
    from ray.cluster_utils import Cluster

    from metadist.distributed import DistributedTrainer
    from metadist.distributed.ray_internals import loopback_only

    loopback_only()
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 3, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    cluster.add_node(num_cpus=3, node_ip_address="127.0.0.1")
    os.environ.pop("RAY_AUTH_MODE")
    checkpoints, server_bytes = {}, {}
    for workers in (1, 2, 3, 5):
        job = tiny_job(small1_uri, small2_uri, tmp / f"w{workers}", *NO_BN, "train.steps=4", "train.meta_batch=5",
                       "train.log_every=4", f"distributed.workers={workers}", "distributed.slices=5",
                       "distributed.reducers=2", f"distributed.address={cluster.address}")
        run = DistributedTrainer(job, progress=False).run()
        checkpoints[str(workers)], server_bytes[str(workers)] = run.checkpoint_uri, run.history[-1]["server_bytes_per_step"]
        ray.shutdown()
    cluster.shutdown()
    param_bytes = sum(v.numel() * v.element_size() for v in ckpt_io.load(checkpoints["1"]).meta_params.values())
    return {"checkpoints": checkpoints, "server_bytes": server_bytes, "param_bytes": param_bytes}


def _declared_gpus(tmp: Path, small1_uri: str, small2_uri: str) -> dict:
    """A one-node cluster that declares 2 GPUs (Ray hands out CUDA_VISIBLE_DEVICES for them on this CPU machine)."""
    from ray.cluster_utils import Cluster

    from metadist.distributed import ClusterError, DistributedTrainer
    from metadist.distributed.ray_internals import loopback_only

    loopback_only()
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 5, "num_gpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    os.environ.pop("RAY_AUTH_MODE")
    report: dict = {}
    for name, sets in {"auto": ("distributed.workers=2",), "cpu": ("distributed.workers=2", "train.device=cpu"),
                       "shared": ("distributed.workers=4", "distributed.gpus_per_worker=0.5", "train.meta_batch=4"),
                       "cuda": ("distributed.workers=2", "train.device=cuda", "distributed.start_timeout_s=60")}.items():
        job = tiny_job(small1_uri, small2_uri, tmp / name, *NO_BN, "train.steps=2", *sets, f"distributed.address={cluster.address}")
        try:
            trainer = DistributedTrainer(job, progress=False)
            asked = trainer.source.resources.num_gpus
            started = trainer.source.group.start
            seen: list = []

            def start(started=started, trainer=trainer, seen=seen):
                started()
                seen.extend(slot.info for slot in trainer.source.group.live_workers())

            trainer.source.group.start = start
            trainer.run()
            report[name] = {"asked": asked, "workers": seen}
        except ClusterError as exc:
            report[name] = str(exc)
        ray.shutdown()
    cluster.shutdown()
    return report


def _cli_until_first_checkpoint(tmp: Path, job, **popen) -> tuple[list[str], subprocess.Popen]:
    """`metadist train JOB --workers 2` started on `job` (written to tmp/job.yaml); returns once it has written its
    first checkpoint (or ended, or half the scenario's time passed): its command line and its process."""
    job_file = tmp / "job.yaml"
    job_file.write_text(yaml.safe_dump(job.model_dump(mode="json")))
    command = [sys.executable, "-m", "metadist", "train", str(job_file), "--workers", "2", "--no-progress"]
    process = subprocess.Popen(command, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)
    deadline = time.monotonic() + SCENARIO_TIMEOUT_S / 2
    while not ckpt_io.run_checkpoints(job.checkpoint.uri) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    return command, process


def _cli_resume(tmp: Path, small1_uri: str, small2_uri: str) -> dict:
    """`metadist train --workers 2`, SIGKILLed after its step-3 checkpoint, then `--resume` to the end."""
    job = tiny_job(small1_uri, small2_uri, tmp / "cli", "train.steps=8")
    command, first = _cli_until_first_checkpoint(tmp, job, start_new_session=True)
    killed_after = [s for s, _ in ckpt_io.run_checkpoints(job.checkpoint.uri)]
    os.killpg(first.pid, signal.SIGKILL)  # the driver, and the Ray it started, die at once
    first.wait()
    second = subprocess.run([*command, "--resume"], cwd=tmp, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S / 2)
    if second.returncode != 0:
        raise RuntimeError(second.stdout[-3000:] + second.stderr[-6000:])
    return {"killed_after_checkpoint": killed_after[-1] if killed_after else None, "stdout": second.stdout,
            "checkpoint": ckpt_io.latest(job.checkpoint.uri)}


def _cli_sigterm(tmp: Path, small1_uri: str, small2_uri: str) -> dict:
    """`metadist train --workers 2` on a long job, sent SIGTERM (as `ray job stop` or a Kubernetes eviction does)
    once it has written its first checkpoint."""
    job = tiny_job(small1_uri, small2_uri, tmp / "sigterm", "train.steps=100000")
    _, driver = _cli_until_first_checkpoint(tmp, job, text=True)
    time.sleep(1.0)  # a few steps past the checkpoint
    driver.send_signal(signal.SIGTERM)  # the driver alone: it stops its workers and the Ray it started
    output, _ = driver.communicate(timeout=SCENARIO_TIMEOUT_S / 2)
    return {"returncode": driver.returncode, "output": output[-6000:],
            "steps": [s for s, _ in ckpt_io.run_checkpoints(job.checkpoint.uri)],
            "locks": [str(p) for p in Path(job.checkpoint.uri).rglob(".lock")]}


if __name__ == "__main__":
    name, tmp_dir, small1, small2 = sys.argv[1:5]
    scenario = {"elastic": _elastic, "cli_resume": _cli_resume, "autoscaling": _autoscaling, "two_nodes": _two_nodes,
                "declared_gpus": _declared_gpus, "cli_sigterm": _cli_sigterm}[name]
    report = scenario(Path(tmp_dir), small1, small2)
    Path(tmp_dir, f"{name}.json").write_text(json.dumps(report))
