"""Held-out evaluation: mean query accuracy (or MSE) over many episodes, with a 95% confidence interval.

The few-shot literature reports the mean over 600 test episodes ± 1.96 standard errors; so does this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from metadist.algorithms.base import MetaLearner
from metadist.algorithms.functional import Params
from metadist.core import autocast

Z95 = 1.959964  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Estimate:
    mean: float
    ci95: float  # half-width: the interval is mean ± ci95
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.ci95:.4f}"


def estimate(values: np.ndarray) -> Estimate:
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    sem = values.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    return Estimate(float(values.mean()), float(Z95 * sem), n)


def evaluate(
    learner: MetaLearner,
    meta_params: Params,
    sampler,
    *,
    episodes: int,
    batch_size: int = 32,
    inner_steps: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    precision: str = "fp32",
) -> dict[str, Estimate]:
    """Per-metric estimates over `episodes` held-out episodes (step 0, task indices 0..episodes-1).

    Keys: loss_after, accuracy_after (classification), and loss_before / accuracy_before for learners that adapt
    weights. The same (sampler seed, episodes) gives the same episodes for every checkpoint, so runs compare fairly.
    precision: train.precision; under 'bf16' adaptation and prediction run under bfloat16 autocast, as in training.
    """
    per_task: dict[str, list[np.ndarray]] = {}
    bar = tqdm(total=episodes, desc="evaluating", unit="episode", disable=not progress, leave=False)
    for start in range(0, episodes, batch_size):
        batch = sampler.sample(0, range(start, min(start + batch_size, episodes))).to(device)
        with autocast(precision, torch.device(device)):
            results = learner.evaluate(meta_params, batch, inner_steps)
        for key, values in results.items():
            per_task.setdefault(key, []).append(values.detach().cpu().double().numpy())
        bar.update(len(batch))
    bar.close()
    return {key: estimate(np.concatenate(chunks)) for key, chunks in sorted(per_task.items())}
