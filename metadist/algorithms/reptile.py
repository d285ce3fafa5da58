"""Reptile (Nichol et al., 2018): move the initialisation towards task-adapted weights.

Per task: θ' = k SGD steps on the support set from θ; the update is the delta θ' − θ, and the outer step moves
θ along the mean delta (an optimizer sees −delta as its gradient). No second derivatives, no query gradient.
"""

from __future__ import annotations

import torch

from metadist.algorithms.base import Update
from metadist.algorithms.functional import Params, over_tasks
from metadist.algorithms.maml import MAML


class Reptile(MAML):
    name = "reptile"
    first_order = True

    def compute_update(self, meta_params: Params, batch) -> Update:
        params = self.model_params(meta_params)
        adapted = over_tasks(lambda x, y: self._adapt_one(params, x, y, self.inner_steps, first_order=True))(
            batch.support_x, batch.support_y
        )
        delta = {k: (adapted[k] - params[k]).sum(0) for k in params}
        with torch.no_grad():
            out = over_tasks(self.forward)(adapted, batch.query_x)
            losses = over_tasks(self.loss)(out, batch.query_y)
            metrics = {"loss_after": float(losses.sum())}
            if self.kind == "classification":
                metrics["accuracy_after"] = float(over_tasks(self._aux)(out, batch.query_y)["accuracy_after"].sum())
        return Update("delta", delta, len(losses), metrics)
