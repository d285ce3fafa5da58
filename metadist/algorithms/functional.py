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


def one_task_forward(model: torch.nn.Module) -> TaskForward:
    """A TaskForward for a pass of one task ([1, B, ...] → [1, B, out]) by plain functional_call: with one task there is
    nothing for vmap to batch, and autograd outside torch.func keeps no graph of the backward pass (torch.func's grad
    always builds one, so that it can be nested). A ResNet-12 task of 80 images at 84 px holds 3.7 GB of activations
    this way, 11 GB under torch.func.grad and 18 GB under vmap(grad) (docs/benchmarks.md, "Backbones")."""

    def forward_tasks(params: Params, x: torch.Tensor, embed_only: bool = False) -> torch.Tensor:
        if x.shape[0] != 1:
            raise ValueError(f"one_task_forward: a pass of one task, got {x.shape[0]}")
        kwargs = {"embed_only": True} if embed_only else {}
        return functional_call(model, {k: v[0] for k, v in params.items()}, (x[0],), kwargs).unsqueeze(0)

    return forward_tasks


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


def minibatch_adapt(
    forward: Forward,
    loss: Callable,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int | None = None,
    second_moment: Params | None = None,
    moment_steps: torch.Tensor | float = 0.0,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[Params, Params | None]:
    """Reptile's inner loop for one task, never differentiated through: `steps` steps, each on the next `batch_size`
    examples of x [B, ...] (cycling; None = all B every step). Returns (adapted params, final second moment).

    SGD when second_moment is None; otherwise Adam with β1 = 0 (Reptile's choice: RMSProp with Adam's bias
    correction) starting from `second_moment` after `moment_steps` earlier steps, in torch.optim.Adam's arithmetic.
    Reptile carries that moment from task to task, as the paper's code does (metadist.algorithms.reptile).
    """
    n = x.shape[0]
    size = n if batch_size is None else min(batch_size, n)
    fast = {k: v.detach() for k, v in params.items()}
    second = None if second_moment is None else {k: second_moment[k] for k in fast}
    for step in range(steps):
        if size == n:
            xb, yb = x, y
        else:
            rows = (torch.arange(size, device=x.device) + step * size) % n
            xb, yb = x[rows], y[rows]
        grads = {k: g.detach() for k, g in grad(lambda f, xb=xb, yb=yb: loss(forward(f, xb), yb))(fast).items()}
        if second is None:
            fast = {k: fast[k] - lr * grads[k] for k in fast}
            continue
        second = {k: beta2 * second[k] + (1 - beta2) * grads[k] ** 2 for k in fast}
        root_correction = torch.sqrt(1 - beta2 ** (torch.as_tensor(moment_steps, dtype=x.dtype, device=x.device) + step + 1))
        fast = {k: fast[k] - lr * grads[k] / (second[k].sqrt() / root_correction + eps) for k in fast}
    return fast, second


def interleave_classes(x: torch.Tensor, y: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Support sets [T, N·K, ...] laid out class by class, reordered shot by shot (one example of every class, then
    the next ...), so consecutive minibatches each hold every class in turn."""
    per_task = x.shape[1]
    if ways < 2 or per_task % ways or y.dim() != 2:
        return x, y  # not an N-way episode (regression)
    shots = per_task // ways
    if not torch.equal(y, torch.arange(ways, device=y.device).repeat_interleave(shots).expand_as(y)):
        return x, y  # another layout: leave it as it is
    order = torch.arange(per_task, device=x.device).view(ways, shots).t().reshape(-1)
    return x[:, order], y[:, order]


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
    task_params: Params | None = None,
) -> Params:
    """The inner loop for all T tasks at once, gradients by autograd instead of torch.func: x [T, B, ...], y [T, B, ...].

    params are shared by the tasks (no task axis); task_params, if given, already have one and replace those of
    params (a head made from each task's support set); the result has one: [T, *shape] per parameter. Each step
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
        start = per_task(params, x.shape[0]) | (task_params or {})
        return inner_sgd(start, steps=steps, lr=lr, adapt_names=adapt_names, gradient=gradient)


def tensor_bytes(tensors: Params) -> int:
    """Bytes held by the tensors of a dict (parameters, an update, adapted task state)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def all_finite(tensors: Params) -> bool:
    """One CPU–GPU sync for the whole dict, not one per tensor."""
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors.values()]).all())
