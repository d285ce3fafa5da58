"""The outer optimizer: applies mean updates, skips non-finite ones, clips, schedules, round-trips its state."""

from __future__ import annotations

import math

import torch

from metadist.algorithms import Update
from metadist.algorithms.outer import MetaOptimizer
from metadist.config import OptimizerConfig


def params():
    return {"w": torch.ones(3), "b": torch.zeros(1)}


def test_sgd_applies_the_mean_gradient_and_reptile_deltas_move_towards_them():
    opt = MetaOptimizer(params(), OptimizerConfig(name="sgd", lr=0.5, clip_norm=None), total_steps=10)
    opt.apply(Update("gradient", {"w": torch.full((3,), 4.0), "b": torch.ones(1) * 2}, num_tasks=2))
    assert torch.allclose(opt.meta_params()["w"], torch.full((3,), 0.0)) and torch.allclose(opt.meta_params()["b"], -0.5 * torch.ones(1))
    opt.apply(Update("delta", {"w": torch.full((3,), 2.0), "b": torch.zeros(1)}, num_tasks=2))
    assert torch.allclose(opt.meta_params()["w"], torch.full((3,), 0.5))


def test_model_averaging_fixed_step_replaces_theta_by_the_average():
    opt = MetaOptimizer(params(), OptimizerConfig(), total_steps=1, fixed_lr=1.0)
    # two tasks adapted to w = 3 and w = 5 from w = 1: deltas 2 and 4, summed 6
    opt.apply(Update("delta", {"w": torch.full((3,), 6.0), "b": torch.zeros(1)}, num_tasks=2))
    assert torch.allclose(opt.meta_params()["w"], torch.full((3,), 4.0))


def test_non_finite_updates_are_skipped_and_counted():
    opt = MetaOptimizer(params(), OptimizerConfig(), total_steps=10)
    result = opt.apply(Update("gradient", {"w": torch.tensor([1.0, float("nan"), 0.0]), "b": torch.zeros(1)}, num_tasks=1))
    assert not result.applied and opt.skipped == 1 and opt.step_count == 0
    assert torch.equal(opt.meta_params()["w"], torch.ones(3))
    opt.apply(Update("gradient", {"w": torch.tensor([float("inf"), 0, 0]), "b": torch.zeros(1)}, num_tasks=1))
    assert opt.skipped == 2


def test_clipping_bounds_the_step():
    opt = MetaOptimizer(params(), OptimizerConfig(name="sgd", lr=1.0, clip_norm=1.0), total_steps=1)
    result = opt.apply(Update("gradient", {"w": torch.tensor([30.0, 40.0, 0.0]), "b": torch.zeros(1)}, num_tasks=1))
    assert math.isclose(result.update_norm, 50.0)
    assert torch.allclose(opt.meta_params()["w"], torch.tensor([1 - 0.6, 1 - 0.8, 1.0]))


def test_cosine_schedule_with_warmup():
    opt = MetaOptimizer(params(), OptimizerConfig(lr=1.0, schedule="cosine", warmup_steps=2), total_steps=12)
    assert [round(opt.lr_at(s), 3) for s in (0, 1, 2, 7, 12)] == [0.5, 1.0, 1.0, 0.5, 0.0]


def test_state_round_trip_resumes_exactly():
    update = Update("gradient", {"w": torch.tensor([0.3, -0.2, 0.1]), "b": torch.ones(1)}, num_tasks=1)
    a = MetaOptimizer(params(), OptimizerConfig(), total_steps=10)
    for _ in range(3):
        a.apply(update)
    b = MetaOptimizer(params(), OptimizerConfig(), total_steps=10)
    b.load_state(a.state())
    a.apply(update)
    b.apply(update)
    for k in a.params:
        assert torch.equal(a.meta_params()[k], b.meta_params()[k])


def test_a_fixed_step_optimizer_has_no_state_to_save_and_resumes_all_the_same():
    update = Update("delta", {"w": torch.tensor([0.3, -0.2, 0.1]), "b": torch.ones(1)}, num_tasks=2)
    a = MetaOptimizer(params(), OptimizerConfig(), total_steps=10, fixed_lr=1.0)
    a.apply(update)
    state = a.state()
    assert state.optimizer is None and state.step_count == 1 and state.next_step == 1
    b = MetaOptimizer(params(), OptimizerConfig(), total_steps=10, fixed_lr=1.0)
    b.load_state(state)
    a.apply(update)
    b.apply(update)
    for k in a.params:
        assert torch.equal(a.meta_params()[k], b.meta_params()[k])
