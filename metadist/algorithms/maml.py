"""MAML (Finn et al., 2017) with the exact second-order meta-gradient, and its first-order variant.

Per task: θ' = θ − α∇L_support(θ) for `inner_steps` steps; the meta-gradient is ∇_θ L_query(θ').
MAML differentiates through the inner loop (Hessian-vector products included); first-order MAML uses
∇_θ' L_query(θ'), the query gradient at the adapted parameters. vmap maps one task's function over all T.
"""

from __future__ import annotations

import torch
from torch.func import grad_and_value, vmap

from metadist.algorithms.base import MetaLearner, Update
from metadist.algorithms.functional import Params, accuracy, sgd_adapt


class MAML(MetaLearner):
    name = "maml"
    first_order = False

    def inner_lrs(self, meta_params: Params) -> float | Params:
        return self.inner_lr

    def adapt_names(self) -> tuple[str, ...] | None:
        return None  # every parameter

    def _adapt_one(self, meta_params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, first_order: bool) -> Params:
        return sgd_adapt(
            self.forward, self.loss, self.model_params(meta_params), x, y,
            steps=steps, lr=self.inner_lrs(meta_params), adapt_names=self.adapt_names(), first_order=first_order,
        )

    def _query_loss(self, meta_params: Params, sx, sy, qx, qy):
        adapted = self._adapt_one(meta_params, sx, sy, self.inner_steps, first_order=False)
        out = self.forward(adapted, qx)
        loss = self.loss(out, qy)
        return loss, self._aux(out, qy)

    def _aux(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"accuracy_after": accuracy(out, y)} if self.kind == "classification" else {}

    def compute_update(self, meta_params: Params, batch) -> Update:
        args = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        if self.first_order:
            grads, (losses, aux) = vmap(self._first_order_task, in_dims=(None, 0, 0, 0, 0))(meta_params, *args)
        else:
            grads, (losses, aux) = vmap(grad_and_value(self._query_loss, has_aux=True), in_dims=(None, 0, 0, 0, 0))(meta_params, *args)
        metrics = {"loss_after": float(losses.sum()), **{k: float(v.sum()) for k, v in aux.items()}}
        return Update("gradient", {k: g.sum(0) for k, g in grads.items()}, len(losses), metrics)

    def _first_order_task(self, meta_params: Params, sx, sy, qx, qy):
        # θ' is a constant here: no graph through the inner loop, only ∇_θ' L_query(θ').
        adapted = self._adapt_one(meta_params, sx, sy, self.inner_steps, first_order=True)
        adapted = {k: v.detach() for k, v in adapted.items()}

        def query_loss(params: Params):
            out = self.forward(params, qx)
            return self.loss(out, qy), self._aux(out, qy)

        grads, (loss, aux) = grad_and_value(query_loss, has_aux=True)(adapted)
        # Parameters the inner loop does not touch (Meta-SGD's learning rates) get no first-order gradient.
        full = {k: grads.get(k, torch.zeros_like(v)) for k, v in meta_params.items()}
        return full, (loss, aux)

    def adapt(self, meta_params: Params, support_x, support_y, steps: int | None = None) -> Params:
        steps = self.eval_inner_steps if steps is None else steps
        return vmap(lambda x, y: self._adapt_one(meta_params, x, y, steps, first_order=True))(support_x, support_y)

    def predict(self, meta_params: Params, adapted: Params, query_x) -> torch.Tensor:
        return vmap(self.forward)(adapted, query_x)


class FirstOrderMAML(MAML):
    name = "fomaml"
    first_order = True
