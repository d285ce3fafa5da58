"""MAML (Finn et al., 2017) with the exact second-order meta-gradient, and its first-order variant.

Per task: θ' = θ − α∇L_support(θ) for `inner_steps` steps; the meta-gradient is ∇_θ L_query(θ').
MAML differentiates through the inner loop (Hessian-vector products included); first-order MAML uses
∇_θ' L_query(θ'), the query gradient at the adapted parameters. vmap maps one task's function over all T.

Models that can run all tasks at once with per-task parameters (`forward_tasks`, e.g. Conv4) take a faster
route to the same numbers: the tasks' losses are summed and differentiated with autograd with respect to
per-task copies of the parameters (functional.sgd_adapt_tasks), with no vmap. On CPU that is about 1.5× faster
for conv-4 (docs/benchmarks.md, "Learning layer"); the maths is unchanged (tests/test_algorithms.py).
"""

from __future__ import annotations

from typing import Self

import torch
from torch.func import grad_and_value

from metadist.algorithms.base import MetaLearner, Update, in_passes
from metadist.algorithms.functional import (
    Params,
    TaskForward,
    accuracy,
    one_task_forward,
    over_tasks,
    per_task,
    sgd_adapt,
    sgd_adapt_tasks,
)
from metadist.config.job import PROTOTYPE_HEAD_ALGORITHMS, ZERO_HEAD_ALGORITHMS

# On CPU, 8 tasks at a time is 10-20% faster than 32 (conv-4, Omniglot 5- and 20-way, 2 cores: the activations of
# 8 tasks stay in cache) and holds a quarter of the memory; on a GPU, more tasks per pass means more parallelism.
CPU_TASKS_PER_PASS = 8
# Second order keeps every inner step's graph until the meta-gradient: memory grows with tasks × (inner_steps + 1)
# forward-backward passes. On CPU at most this many are held at once: 8 tasks at 1 inner step, 2 at 5 (which
# keeps 5-step MAML's peak RSS under learn2learn's, which holds one task's graph at a time).
CPU_SECOND_ORDER_PASSES = 16
# A prototype head's bias for a class the support set lacks: its logit never wins, and exp() of it is exactly 0.
ABSENT_CLASS_BIAS = -1e4

class MAML(MetaLearner):
    name = "maml"
    first_order = False

    def __init__(self, *args, tasks_per_pass: int | None = None, zero_head: bool = False, prototype_head: bool = False,
                 **kwargs) -> None:
        """tasks_per_pass: compute_update differentiates at most this many tasks at a time and sums the parts.

        The result is the same up to float rounding; memory grows with the tasks whose graphs are alive together
        (times inner_steps + 1 for second order). None: for a model with forward_tasks on CPU, CPU_TASKS_PER_PASS,
        or fewer for second order with several inner steps (CPU_SECOND_ORDER_PASSES); otherwise the whole batch.

        zero_head: every task starts its inner loop from a zero head (the model's HEAD parameters), not a learned
        one: the "zeroing trick" of Kao et al. (2022). A task's labels are a random permutation, so a learned head
        init can only be a bias towards some classes that adaptation must first undo; from zero, the first inner
        step sets each class's weights to the inner rate times its support examples' mean features (minus the mean
        over classes), prototype-like. The head's meta-parameters are then unused (their gradient is zero).

        prototype_head: every task starts from the head that makes the logits ProtoNet's (Proto-MAML, Triantafillou
        et al. 2020): row k = 2·c_k, bias −‖c_k‖², c_k the mean embedding of class k's support examples, since
        −‖z − c_k‖² = 2 c_k·z − ‖c_k‖² − ‖z‖² and the last term is the same for every class. The meta-gradient flows
        through the prototypes into the body; the head's meta-parameters are unused.
        """
        super().__init__(*args, **kwargs)
        if tasks_per_pass is not None and tasks_per_pass < 1:
            raise ValueError(f"{type(self).__name__}: tasks_per_pass must be >= 1 or None, got {tasks_per_pass}")
        for option, wanted in (("zero_head", zero_head), ("prototype_head", prototype_head)):
            if wanted and not getattr(self.model, "HEAD", None):
                raise ValueError(f"{type(self).__name__}: {option} needs a model that names its head parameters (HEAD); "
                                 f"{type(self.model).__name__} does not")
        if zero_head and prototype_head:
            raise ValueError(f"{type(self).__name__}: zero_head and prototype_head are two different head starts; pick one")
        self.tasks_per_pass = tasks_per_pass
        self.zero_head = zero_head
        self.prototype_head = prototype_head

    @classmethod
    def from_config(cls, config, model: torch.nn.Module, kind: str, **settings) -> Self:
        # The head starts are for the MAML family (and a prototype head for Reptile's); the Meta-Learner LSTM (a
        # subclass) updates its head by its own rule.
        return super().from_config(config, model, kind, tasks_per_pass=config.tasks_per_pass,
                                   zero_head=config.zero_head and config.name in ZERO_HEAD_ALGORITHMS,
                                   prototype_head=config.prototype_head and config.name in PROTOTYPE_HEAD_ALGORITHMS,
                                   **settings)

    def head_names(self) -> tuple[str, ...]:
        """The model's head parameters (its class states them: `HEAD`)."""
        return tuple(getattr(self.model, "HEAD", ()))

    def task_start(self, meta_params: Params) -> Params:
        params = self.model_params(meta_params)
        if not self.zero_head:
            return params
        return params | {k: torch.zeros_like(params[k]) for k in self.head_names()}

    def inner_lrs(self, meta_params: Params) -> float | Params:
        return self.inner_lr

    def adapt_names(self) -> tuple[str, ...] | None:
        return None  # every parameter

    def head_from_prototypes(self, z: torch.Tensor, y: torch.Tensor) -> Params:
        """The head whose logits are −‖z − c_k‖² + const (prototype_head), from support embeddings z [..., S, D] and
        labels y [..., S]; a class the support lacks gets a bias that no logit of the others falls below."""
        weight_name, bias_name = self.head_names()
        ways = self.model.get_parameter(weight_name).shape[0]
        one_hot = (y.unsqueeze(-1) == torch.arange(ways, device=y.device)).to(z.dtype)  # [..., S, N] (vmap-safe)
        counts = one_hot.sum(-2)  # [..., N]
        centres = (one_hot.transpose(-1, -2) @ z) / counts.clamp(min=1).unsqueeze(-1)  # [..., N, D]
        bias = torch.where(counts > 0, -(centres**2).sum(-1), torch.full_like(counts, ABSENT_CLASS_BIAS))
        return {weight_name: 2 * centres, bias_name: bias}

    def _task_start_for(self, meta_params: Params, x: torch.Tensor, y: torch.Tensor) -> Params:
        """One task's starting parameters, given its support set (which a prototype head is made from)."""
        params = self.task_start(meta_params)
        if not self.prototype_head:
            return params
        z = self.forward_embedding(params, x)
        return params | self.head_from_prototypes(z, y)

    def forward_embedding(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.model, params, (x,), {"embed_only": True})

    def _adapt_one(self, meta_params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, first_order: bool) -> Params:
        return sgd_adapt(
            self.forward, self.loss, self._task_start_for(meta_params, x, y), x, y,
            steps=steps, lr=self.inner_lrs(meta_params), adapt_names=self.adapt_names(), first_order=first_order,
        )

    def _query_loss(self, meta_params: Params, sx, sy, qx, qy):
        adapted = self._adapt_one(meta_params, sx, sy, self.inner_steps, first_order=False)
        out = self.forward(adapted, qx)
        loss = self.loss(out, qy)
        return loss, self._aux(out, qy)

    def _aux(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"accuracy_after": accuracy(out, y)} if self.kind == "classification" else {}

    def task_forward(self, tasks: int) -> TaskForward | None:
        """The forward of the autograd route for a pass of `tasks` tasks: the model's all-tasks-at-once forward (the
        faster route for SGD inner loops), a plain one for a single task (one_task_forward: less memory than vmap's
        route, nothing to batch), or None for vmap's route."""
        forward_tasks = getattr(self.model, "forward_tasks", None)
        if forward_tasks is None and tasks == 1:
            return one_task_forward(self.model)
        return forward_tasks

    def compute_update(self, meta_params: Params, batch) -> Update:
        on_cpu = batch.support_x.device.type == "cpu"
        size = self.tasks_per_pass
        if size is None and on_cpu and self.task_forward(len(batch)) is not None:
            # (models without forward_tasks go through vmap, whose per-call cost favours one pass: unchanged)
            size = CPU_TASKS_PER_PASS
            if not self.first_order:
                size = max(1, min(size, CPU_SECOND_ORDER_PASSES // (self.inner_steps + 1)))
        update = in_passes(self._compute_update, meta_params, batch, size)
        if self.zero_head or self.prototype_head:  # the head's meta-parameters are unused (first order would move them)
            update.tensors.update({k: torch.zeros_like(update.tensors[k]) for k in self.head_names()})
        return update

    def _compute_update(self, meta_params: Params, batch) -> Update:
        forward_tasks = self.task_forward(len(batch))
        if forward_tasks is not None:
            return self._compute_update_all_tasks(forward_tasks, meta_params, batch)
        args = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        if self.first_order:
            grads, (losses, aux) = over_tasks(self._first_order_task, in_dims=(None, 0, 0, 0, 0))(meta_params, *args)
        else:
            grads, (losses, aux) = over_tasks(grad_and_value(self._query_loss, has_aux=True), in_dims=(None, 0, 0, 0, 0))(meta_params, *args)
        metrics = {"loss_after": float(losses.sum()), **{k: float(v.sum()) for k, v in aux.items()}}
        return Update("gradient", {k: g.sum(0) for k, g in grads.items()}, len(losses), metrics)

    def _first_order_task(self, meta_params: Params, sx, sy, qx, qy):
        # θ' is a constant here: no graph through the inner loop, only ∇_θ' L_query(θ') (and, with a prototype head,
        # the query loss's path through the prototypes the head started from: see with_prototype_gradient).
        adapted = self._adapt_one(meta_params, sx, sy, self.inner_steps, first_order=True)
        adapted = {k: v.detach() for k, v in adapted.items()}

        def query_loss(params: Params, meta: Params):
            if self.prototype_head:
                heads = self.head_from_prototypes(self.forward_embedding(self.task_start(meta), sx), sy)
                params = with_prototype_gradient(params, heads)
            out = self.forward(params, qx)
            return self.loss(out, qy), self._aux(out, qy)

        if self.prototype_head:
            (grads, through), (loss, aux) = grad_and_value(query_loss, argnums=(0, 1), has_aux=True)(adapted, meta_params)
        else:
            grads, (loss, aux) = grad_and_value(query_loss, has_aux=True)(adapted, meta_params)
            through = {}
        # Parameters the inner loop does not touch (Meta-SGD's learning rates) get no first-order gradient.
        full = {k: grads.get(k, torch.zeros_like(v)) + through.get(k, 0) for k, v in meta_params.items()}
        return full, (loss, aux)

    def _compute_update_all_tasks(self, forward_tasks: TaskForward, meta_params: Params, batch) -> Update:
        """compute_update with the tasks batched by the model and autograd, not vmap: the same numbers."""
        with torch.enable_grad():
            # With a prototype head, first order also follows the query loss through the prototypes back to θ.
            theta = {k: v.detach().requires_grad_() for k, v in meta_params.items()} if self.first_order and self.prototype_head else {}
            if self.first_order:
                # θ' is a constant: the inner loop builds no graph and the gradient is taken at θ' itself.
                params = {k: v.detach() for k, v in self.task_start(meta_params).items()}
                heads = self._prototype_heads(forward_tasks, self.task_start(theta), batch) if theta else None
                adapted = sgd_adapt_tasks(
                    forward_tasks, self.loss, params, batch.support_x, batch.support_y, steps=self.inner_steps,
                    lr=self.inner_lrs(meta_params), adapt_names=self.adapt_names(), first_order=True,
                    task_params=None if heads is None else {k: h.detach() for k, h in heads.items()},
                )
                wrt = {k: v.detach().requires_grad_() for k, v in adapted.items()}
                out = forward_tasks(wrt if heads is None else with_prototype_gradient(wrt, heads), batch.query_x)
            else:
                wrt = {k: v.detach().requires_grad_() for k, v in meta_params.items()}
                start = self.task_start(wrt)
                adapted = sgd_adapt_tasks(
                    forward_tasks, self.loss, start, batch.support_x, batch.support_y,
                    steps=self.inner_steps, lr=self.inner_lrs(wrt), adapt_names=self.adapt_names(),
                    task_params=self._prototype_heads(forward_tasks, start, batch),
                )
                out = forward_tasks(adapted, batch.query_x)
            losses = over_tasks(self.loss)(out, batch.query_y)  # [T]
            grads = torch.autograd.grad(losses.sum(), [*wrt.values(), *theta.values()], allow_unused=True)
        # First order: per-task gradients at each θ'_t, summed here (plus the prototypes' path to θ); second order:
        # already summed over tasks by the per-task copies' backward. Parameters with no gradient (Meta-SGD's rates
        # in first order) get zeros.
        summed = {k: (g.sum(0) if self.first_order else g) for k, g in zip(wrt, grads) if g is not None}
        for k, g in zip(theta, grads[len(wrt):]):
            if g is not None:
                summed[k] = summed[k] + g if k in summed else g
        tensors = {k: summed[k] if k in summed else torch.zeros_like(v) for k, v in meta_params.items()}
        aux = over_tasks(self._aux)(out.detach(), batch.query_y)
        metrics = {"loss_after": float(losses.detach().sum()), **{k: float(v.sum()) for k, v in aux.items()}}
        return Update("gradient", tensors, len(losses), metrics)

    def _prototype_heads(self, forward_tasks: TaskForward, params: Params, batch) -> Params | None:
        """Each task's prototype head [T, ...] (prototype_head), or None."""
        if not self.prototype_head:
            return None
        z = forward_tasks(per_task(params, len(batch)), batch.support_x, embed_only=True)  # type: ignore[call-arg]
        return self.head_from_prototypes(z, batch.support_y)

    def adapt(self, meta_params: Params, support_x, support_y, steps: int | None = None) -> Params:
        steps = self.eval_inner_steps if steps is None else steps
        return over_tasks(lambda x, y: self._adapt_one(meta_params, x, y, steps, first_order=True))(support_x, support_y)

    def predict(self, meta_params: Params, adapted: Params, query_x) -> torch.Tensor:
        return over_tasks(self.forward)(adapted, query_x)

    def outputs_before_adaptation(self, meta_params: Params, batch) -> torch.Tensor:
        if not self.prototype_head:
            return super().outputs_before_adaptation(meta_params, batch)
        # Each task starts from its own head (its prototypes): "before" is that head, no inner step taken.
        return self.predict(meta_params, self.adapt(meta_params, batch.support_x, batch.support_y, steps=0), batch.query_x)


def with_prototype_gradient(adapted: Params, heads: Params) -> Params:
    """The adapted parameters, whose head's value stays the adapted head but whose gradient also flows into the
    prototype heads it started from (first-order Proto-MAML: the inner steps are constants, the start is not)."""
    return adapted | {k: adapted[k] + (heads[k] - heads[k].detach()) for k in heads}


class FirstOrderMAML(MAML):
    name = "fomaml"
    first_order = True
