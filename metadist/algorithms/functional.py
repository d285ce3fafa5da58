"""Pure building blocks shared by the learners: losses, the SGD inner loop, parameter-dict arithmetic.

Parameters travel as dicts of tensors (name → tensor); every function returns new dicts and mutates nothing,
so torch.func can differentiate through them (grad) and map them over tasks (vmap).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

Params = dict[str, torch.Tensor]
Forward = Callable[[Params, torch.Tensor], torch.Tensor]
# All tasks at once: params[name] [T, *shape] (each task its own), x [T, B, ...] → outputs [T, B, ...]
# (a model's `forward_tasks`, e.g. Conv4.forward_tasks).
TaskForward = Callable[[Params, torch.Tensor], torch.Tensor]


def over_tasks(function: Callable, in_dims: int | tuple = 0) -> Callable:
    """`function` mapped over the task axis with vmap. Random ops inside (DropBlock) draw independently per task,
    as they would in a loop over the tasks; without any, this is plain vmap."""
    return vmap(function, in_dims=in_dims, randomness="different")


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


def inner_sgd(params: Params, *, steps: int, lr: float | Params, adapt_names: Iterable[str] | None,
              gradient: Callable[[Params, Params], Params]) -> Params:
    """The inner loop every weight-adapting learner runs: `steps` SGD steps on the parameters named in adapt_names
    (all when None; ANIL: the head), the others held fixed. `gradient(fixed, fast)` is the support-loss gradient
    with respect to `fast`; `lr` is a float or a per-parameter dict (Meta-SGD's learned rates)."""
    wanted = set(params) if adapt_names is None else set(adapt_names)
    names = [n for n in params if n in wanted]
    fixed = {n: p for n, p in params.items() if n not in wanted}
    fast = {n: params[n] for n in names}
    for _ in range(steps):
        grads = gradient(fixed, fast)
        fast = {n: fast[n] - (lr[n] if isinstance(lr, dict) else lr) * grads[n] for n in names}
    return {**fixed, **fast}


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
    """The inner loop for one task, gradients by torch.func (so vmap maps it over tasks): x [B, ...], y [B, ...].

    Differentiable end to end unless first_order, which cuts the graph through the inner gradients.
    """

    def gradient(fixed: Params, fast: Params) -> Params:
        grads = grad(lambda f: loss(forward({**fixed, **f}, x), y))(fast)
        return {n: g.detach() for n, g in grads.items()} if first_order else grads

    return inner_sgd(params, steps=steps, lr=lr, adapt_names=adapt_names, gradient=gradient)


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
    """The inner loop for all T tasks at once, gradients by autograd instead of torch.func: x [T, B, ...], y [T, B, ...].

    params are shared by the tasks (no task axis); the result has one: [T, *shape] per parameter. Each step
    differentiates the sum of the T task losses with respect to the [T, ...] per-task parameters; task t's loss
    depends only on its own slice, so the slices of that gradient are the tasks' own gradients — the same
    numbers as vmap(sgd_adapt). Differentiable end to end (create_graph) unless first_order, which takes each
    step's gradient at a detached copy, so that no graph of the inner backward pass is ever built.
    """

    def gradient(fixed: Params, fast: Params) -> Params:
        # A detached copy where the gradient is taken without a graph (or where there is none to keep).
        at = {n: p if p.requires_grad and not first_order else p.detach().requires_grad_() for n, p in fast.items()}
        losses = over_tasks(loss)(forward_tasks({**fixed, **at}, x), y)
        grads = torch.autograd.grad(losses.sum(), list(at.values()), create_graph=not first_order)
        return dict(zip(at, grads))

    with torch.enable_grad():  # evaluation may call this under no_grad; the inner gradients are still needed
        return inner_sgd(per_task(params, x.shape[0]), steps=steps, lr=lr, adapt_names=adapt_names, gradient=gradient)


def tensor_bytes(tensors: Params) -> int:
    """Bytes held by the tensors of a dict (parameters, an update, adapted task state)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def all_finite(tensors: Params) -> bool:
    """One CPU–GPU sync for the whole dict, not one per tensor."""
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors.values()]).all())
