"""The shape of a step's episodes: N-way K-shot as configured, or Meta-Dataset's variable way and shot.

Meta-Dataset (Triantafillou et al., 2020, section 3.2) draws each episode's shape: the number of classes N uniformly,
a support budget |S| = min(max_support, Σ_c ⌈β · min(K_max, |c| − Q)⌉) with β ~ U(0, 1), and each class's shots
from unequal shares, k_c = min(⌊R_c (|S| − N)⌋ + 1, |c| − Q) with R_c ∝ exp(α_c) |c|, α_c ~ U(log ½, log 2).

Here the shape is drawn once per outer step, from (seed, step) alone, so every task of the step (whichever worker
computes it) has the same tensors to stack: a meta-batch of one is Meta-Dataset's episode-by-episode sampling, and
a meta-batch of T is T episodes of one drawn shape. Class sizes |c| are the split's smallest class, the size every
class of every task can serve (Omniglot's and mini-ImageNet's classes are all one size, where this is exact).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from metadist.config import EpisodeConfig
from metadist.data import rng

LOG_HALF, LOG_TWO = math.log(0.5), math.log(2.0)  # the range of Meta-Dataset's per-class share exponents α_c


@dataclass(frozen=True)
class EpisodeShape:
    """One step's episode shape: `shots[c]` support examples of class c (c < ways) and `queries` of each."""

    shots: tuple[int, ...]
    queries: int

    @property
    def ways(self) -> int:
        return len(self.shots)

    @property
    def support_size(self) -> int:
        return sum(self.shots)

    @property
    def most_shots(self) -> int:
        return max(self.shots)

    @property
    def equal_shots(self) -> bool:
        return len(set(self.shots)) == 1

    @cached_property
    def support_slots(self) -> tuple[np.ndarray, np.ndarray]:
        """(class, position) of every support example, class by class: indices into a [N, K_max + Q] choice."""
        classes = np.repeat(np.arange(self.ways), self.shots)
        positions = np.concatenate([np.arange(k) for k in self.shots])
        return classes, positions

    @cached_property
    def query_slots(self) -> tuple[np.ndarray, np.ndarray]:
        """(class, position) of every query, class by class: the Q examples after the class's own shots."""
        classes = np.repeat(np.arange(self.ways), self.queries)
        positions = np.concatenate([k + np.arange(self.queries) for k in self.shots])
        return classes, positions

    @cached_property
    def labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Support and query labels, class by class: [Σ k_c] and [N · Q] (shared: copy before writing)."""
        return torch.from_numpy(self.support_slots[0]), torch.from_numpy(self.query_slots[0])


@functools.cache  # one object per configuration, so its index arrays and labels are built once, not every step
def fixed_shape(episode: EpisodeConfig) -> EpisodeShape:
    return EpisodeShape((episode.shots,) * episode.ways, episode.queries)


def episode_shape(episode: EpisodeConfig, seed: int, step: int, smallest_class: int) -> EpisodeShape:
    """The shape of step `step`'s episodes: fixed unless `episode.variable` is set; a pure function of its arguments."""
    variable = episode.variable
    if variable is None:
        return fixed_shape(episode)
    q = episode.queries
    u = rng.uniform(seed, step, np.zeros(1, dtype=np.int64), rng.STREAM_EPISODE_SHAPE, (2 + episode.ways,))[0]
    ways = variable.min_ways + min(int(u[0] * (episode.ways - variable.min_ways + 1)), episode.ways - variable.min_ways)
    cap = min(episode.shots, smallest_class - q)  # a class's shots leave Q of its examples for the queries
    if not variable.imbalanced_shots:
        return EpisodeShape((cap,) * ways, q)
    beta = u[1]
    budget = min(variable.max_support, ways * math.ceil(beta * cap)) if beta > 0 else ways
    shares = np.exp(LOG_HALF + u[2 : 2 + ways] * (LOG_TWO - LOG_HALF))
    shares /= shares.sum()
    shots = np.minimum(np.floor(shares * (budget - ways)).astype(np.int64) + 1, cap)
    return EpisodeShape(tuple(int(k) for k in shots), q)
