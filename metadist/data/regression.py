"""Generated regression task families, sampled on the fly with the same episode interface as shard sets.

The sinusoid is the MAML paper's (Finn et al., 2017, §5.1): y = A·sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π],
x ~ U[−5, 5]. The ranges below define the families; they are not tunable defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from metadist.data import rng
from metadist.data.episodes import RegressionBatch


@dataclass(frozen=True)
class SinusoidTasks:
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    param_names = ("amplitude", "phase")

    def function(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        return params[:, None, 0:1] * np.sin(x - params[:, None, 1:2])

    def draw_params(self, u: np.ndarray) -> np.ndarray:
        return np.stack([_scale(u[:, 0], self.amplitude), _scale(u[:, 1], self.phase)], axis=1)


@dataclass(frozen=True)
class LinearTasks:
    slope: tuple[float, float] = (-3.0, 3.0)
    intercept: tuple[float, float] = (-3.0, 3.0)
    x_range: tuple[float, float] = (-5.0, 5.0)
    param_names = ("slope", "intercept")

    def function(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        return params[:, None, 0:1] * x + params[:, None, 1:2]

    def draw_params(self, u: np.ndarray) -> np.ndarray:
        return np.stack([_scale(u[:, 0], self.slope), _scale(u[:, 1], self.intercept)], axis=1)


FAMILIES: dict[str, type[SinusoidTasks] | type[LinearTasks]] = {"sinusoid": SinusoidTasks, "linear": LinearTasks}


def _scale(u: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    return bounds[0] + u * (bounds[1] - bounds[0])


class RegressionSampler:
    """K-shot regression episodes, deterministic in (seed, step, task index) like EpisodeSampler."""

    def __init__(self, family: SinusoidTasks | LinearTasks | str, *, shots: int, queries: int, seed: int) -> None:
        self.family = FAMILIES[family]() if isinstance(family, str) else family
        self.shots, self.queries, self.seed = shots, queries, int(seed)

    def sample(self, step: int, task_indices) -> RegressionBatch:
        tasks = np.asarray(task_indices, dtype=np.int64).reshape(-1)
        params = self.family.draw_params(rng.uniform(self.seed, step, tasks, rng.STREAM_REGRESSION_TASK, (2,)))
        points = self.shots + self.queries
        x = _scale(rng.uniform(self.seed, step, tasks, rng.STREAM_REGRESSION_X, (points, 1)), self.family.x_range)
        y = self.family.function(params, x)
        x_t, y_t = torch.from_numpy(x).float(), torch.from_numpy(y).float()
        return RegressionBatch(
            support_x=x_t[:, : self.shots].contiguous(),
            support_y=y_t[:, : self.shots].contiguous(),
            query_x=x_t[:, self.shots :].contiguous(),
            query_y=y_t[:, self.shots :].contiguous(),
            task_params=torch.from_numpy(params).float(),
            task_indices=torch.from_numpy(tasks),
            step=int(step),
        )
