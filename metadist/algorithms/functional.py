"""Pure building blocks shared by the learners: losses, the SGD inner loop, parameter-dict arithmetic.

Parameters travel as dicts of tensors (name → tensor); every function returns new dicts and mutates nothing,
so torch.func can differentiate through them (grad) and map them over tasks (vmap).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

Params = dict[str, torch.Tensor]
Forward = Callable[[Params, torch.Tensor], torch.Tensor]
# All tasks at once: params[name] [T, *shape] (each task its own), x [T, B, ...] → outputs [T, B, ...]
# (a model's `forward_tasks`, e.g. Conv4.forward_tasks).
TaskForward = Callable[[Params, torch.Tensor], torch.Tensor]


def make_forward(model: torch.nn.Module) -> Forward:
    """params, x → model(x) computed with `params`, without touching the module's own parameters."""
    return lambda params, x: functional_call(model, params, (x,))


def task_loss(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy for classification (logits [B, N], labels [B]); MSE for regression."""
    if kind == "classification":
        return F.cross_entropy
    if kind == "regression":
        return F.mse_loss
    raise ValueError(f"task kind must be 'classification' or 'regression', got {kind!r}")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).to(logits.dtype).mean()


def sgd_adapt(
    forward: Forward,
    loss: Callable,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float | Params,
    adapt_names: Iterable[str] | None = None,
    first_order: bool = False,
) -> Params:
    """`steps` SGD steps on (x, y), one task. `lr` is a float or a per-parameter tensor dict (Meta-SGD).

    adapt_names limits adaptation to some parameters (ANIL: the head); the rest are held fixed.
    Differentiable end to end unless first_order, which cuts the graph through the inner gradients.
    """
    names = list(params) if adapt_names is None else [n for n in params if n in set(adapt_names)]
    fixed = {n: p for n, p in params.items() if n not in names}
    fast = {n: params[n] for n in names}

    def inner_loss(fast_params: Params) -> torch.Tensor:
        return loss(forward({**fixed, **fast_params}, x), y)

    for _ in range(steps):
        grads = grad(inner_loss)(fast)
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        fast = {n: fast[n] - (lr[n] if isinstance(lr, dict) else lr) * grads[n] for n in names}
    return {**fixed, **fast}


def per_task(params: Params, tasks: int) -> Params:
    """Each tensor with a leading task axis of size `tasks`: an expanded view, so gradients flow back summed."""
    return {name: p.unsqueeze(0).expand(tasks, *p.shape) for name, p in params.items()}


def sgd_adapt_tasks(
    forward_tasks: TaskForward,
    loss: Callable,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float | Params,
    adapt_names: Iterable[str] | None = None,
    first_order: bool = False,
) -> Params:
    """sgd_adapt for all T tasks at once, with autograd instead of torch.func: x [T, B, ...], y [T, B, ...].

    params are shared by the tasks (no task axis); the result has one: [T, *shape] per parameter. Each step
    differentiates the sum of the T task losses with respect to the [T, ...] per-task parameters; task t's loss
    depends only on its own slice, so the slices of that gradient are the tasks' own gradients — the same
    numbers as vmap(sgd_adapt). Differentiable end to end (create_graph) unless first_order, which takes each
    step's gradient at a detached copy, so that no graph of the inner backward pass is ever built.
    """
    task_params = per_task(params, x.shape[0])
    names = list(params) if adapt_names is None else [n for n in params if n in set(adapt_names)]
    fixed = {n: p for n, p in task_params.items() if n not in names}
    fast = {n: task_params[n] for n in names}
    with torch.enable_grad():  # evaluation may call this under no_grad; the inner gradients are still needed
        for _ in range(steps):
            # A detached copy where the gradient is taken without a graph (or where there is none to keep).
            at = {n: p if p.requires_grad and not first_order else p.detach().requires_grad_() for n, p in fast.items()}
            losses = vmap(loss)(forward_tasks({**fixed, **at}, x), y)
            grads = torch.autograd.grad(losses.sum(), [at[n] for n in names], create_graph=not first_order)
            fast = {n: fast[n] - (lr[n] if isinstance(lr, dict) else lr) * g for n, g in zip(names, grads)}
    return {**fixed, **fast}


def tree_sum(dicts: list[Params]) -> Params:
    return {k: torch.stack([d[k] for d in dicts]).sum(0) for k in dicts[0]}


def all_finite(tensors: Params) -> bool:
    """One CPU–GPU sync for the whole dict, not one per tensor."""
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors.values()]).all())
