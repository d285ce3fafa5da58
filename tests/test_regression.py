"""Generated regression task families: the MAML sinusoid and linear functions."""

from __future__ import annotations

import math

import pytest
import torch

from metadist.config import RegressionConfig
from metadist.data import LinearTasks, RegressionSampler, SinusoidTasks


def test_sinusoid_tasks_follow_the_maml_definition():
    batch = RegressionSampler("sinusoid", shots=5, queries=10, seed=0).sample(step=0, task_indices=range(2000))
    amplitude, phase = batch.task_params[:, 0], batch.task_params[:, 1]
    assert batch.support_x.shape == (2000, 5, 1) and batch.query_y.shape == (2000, 10, 1)
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0 and 0 <= phase.min() and phase.max() <= math.pi
    assert -5 <= batch.support_x.min() and batch.query_x.max() <= 5
    expected = amplitude[:, None, None] * torch.sin(batch.query_x - phase[:, None, None])
    assert torch.allclose(batch.query_y, expected, atol=1e-5)
    assert abs(amplitude.mean() - 2.55) < 0.1  # uniform on [0.1, 5]


def test_linear_tasks():
    batch = RegressionSampler(LinearTasks(), shots=3, queries=3, seed=1).sample(step=2, task_indices=[0, 1])
    slope, intercept = batch.task_params[:, :1, None], batch.task_params[:, 1:, None]
    assert torch.allclose(batch.support_y, slope * batch.support_x + intercept, atol=1e-5)


def test_regression_episodes_are_deterministic_per_task():
    sampler = RegressionSampler(SinusoidTasks(), shots=5, queries=5, seed=3)
    a = sampler.sample(4, range(6))
    b = sampler.sample(4, [5, 2])
    assert torch.equal(a.support_x[5], b.support_x[0]) and torch.equal(a.query_y[2], b.query_y[1])
    assert not torch.equal(a.support_x[0], sampler.sample(5, [0]).support_x[0])


def test_regression_config_rejects_unknown_family():
    with pytest.raises(ValueError, match="Input should be 'sinusoid' or 'linear'"):
        RegressionConfig(family="quadratic")


def test_every_configurable_family_is_implemented():
    from typing import get_args

    from metadist.config.job import RegressionFamily
    from metadist.data.regression import FAMILIES

    assert set(get_args(RegressionFamily)) == set(FAMILIES)
