"""The outer loop's optimizer: owns the meta-parameters and applies summed worker updates to them.

The local trainer and the parameter server both hold one of these; nothing else changes meta-parameters.
An update with a NaN or Inf anywhere is skipped and counted, never applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from metadist.algorithms.base import MetaLearner, Update
from metadist.algorithms.functional import Params, all_finite
from metadist.config import OptimizerConfig


@dataclass(frozen=True)
class OuterState:
    """Everything the outer optimizer holds: what a checkpoint saves and a resumed run (or a restarted parameter
    server) loads back."""

    params: Params  # the meta-parameters, detached
    optimizer: dict | None  # torch.optim state_dict; None for a fixed-step learner (model averaging), which has none
    step_count: int  # outer steps applied
    skipped: int  # updates refused for NaN/Inf

    @property
    def next_step(self) -> int:
        """Every outer step is either applied or skipped, so this is the next one to take."""
        return self.step_count + self.skipped


@dataclass(frozen=True)
class StepResult:
    applied: bool
    lr: float
    update_norm: float  # before clipping


class MetaOptimizer:
    def __init__(self, meta_params: Params, config: OptimizerConfig, *, total_steps: int, fixed_lr: float | None = None,
                 running_prefixes: tuple[str, ...] = ()) -> None:
        """fixed_lr: plain SGD at this step with no schedule or clipping (the model-averaging learner's θ ← mean θ').
        running_prefixes: entries that are running statistics, not learned (Reptile's inner Adam moments): each
        outer step sets them to the tasks' mean (s ← s + mean delta), outside the optimizer, its schedule and clipping."""
        self.config = config
        self.total_steps = total_steps
        self.fixed_lr = fixed_lr
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in meta_params.items()}
        self.running = tuple(k for k in self.params if running_prefixes and k.startswith(running_prefixes))
        tensors = [v for k, v in self.params.items() if k not in self.running]
        self.optimizer: torch.optim.Optimizer
        if fixed_lr is not None:
            self.optimizer = torch.optim.SGD(tensors, lr=fixed_lr)
        elif config.name == "adam":
            self.optimizer = torch.optim.Adam(tensors, lr=config.lr)
        else:
            self.optimizer = torch.optim.SGD(tensors, lr=config.lr)
        self.step_count = 0  # outer steps applied
        self.skipped = 0  # updates refused for NaN/Inf

    @classmethod
    def for_learner(cls, learner: MetaLearner, meta_params: Params, config: OptimizerConfig, *, total_steps: int) -> MetaOptimizer:
        """The outer optimizer a learner asks for: its fixed step, if any, and its running statistics."""
        return cls(meta_params, config, total_steps=total_steps, fixed_lr=getattr(learner, "fixed_outer_lr", None),
                   running_prefixes=learner.running_prefixes)

    def lr_at(self, step: int) -> float:
        if self.fixed_lr is not None:
            return self.fixed_lr
        c = self.config
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        span = max(1, self.total_steps - c.warmup_steps)
        progress = min(1.0, (step - c.warmup_steps) / span)
        if c.schedule == "cosine":
            return 0.5 * c.lr * (1 + math.cos(math.pi * progress))
        if c.schedule == "linear":
            return c.lr * (1 - progress)
        return c.lr

    def apply(self, update: Update, step_scale: float = 1.0) -> StepResult:
        """One outer step along the update's mean pseudo-gradient. step_scale < 1 shortens the step itself (a stale
        asynchronous update): scaling the gradient instead would be undone by Adam's normalisation."""
        gradient = update.as_gradient()
        lr = self.lr_at(self.step_count) * step_scale
        if not all_finite(gradient):
            self.skipped += 1
            return StepResult(applied=False, lr=lr, update_norm=float("nan"))
        with torch.no_grad():
            for name in self.running:
                self.params[name].sub_(gradient.pop(name))  # − (− mean delta): the tasks' mean statistic
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gradient.values()])))
        scale = 1.0
        if self.fixed_lr is None and self.config.clip_norm is not None and norm > self.config.clip_norm:
            scale = self.config.clip_norm / (norm + 1e-12)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for name, g in gradient.items():
            self.params[name].grad = g * scale
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        return StepResult(applied=True, lr=lr, update_norm=norm)

    def meta_params(self) -> Params:
        """A detached snapshot to hand to learners (and workers)."""
        return {k: v.detach().clone() for k, v in self.params.items()}

    def state(self) -> OuterState:
        optimizer = None if self.fixed_lr is not None else self.optimizer.state_dict()
        return OuterState(self.meta_params(), optimizer, self.step_count, self.skipped)

    def load_state(self, state: OuterState) -> None:
        with torch.no_grad():
            for k, v in state.params.items():
                self.params[k].copy_(v)
        if state.optimizer is not None:
            self.optimizer.load_state_dict(state.optimizer)
        self.step_count = state.step_count
        self.skipped = state.skipped
