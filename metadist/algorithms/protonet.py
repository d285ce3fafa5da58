"""Prototypical Networks (Snell et al., 2017): classify by distance to class prototypes in a learned space.

A prototype is the mean embedding of a class's support examples; logits are negative squared Euclidean
distances from each query's embedding to the N prototypes. "Adapting" is computing prototypes: no weights
change, so there is no inner loop and no before-adaptation score.
"""

from __future__ import annotations

import torch

from metadist.algorithms.base import MetricLearner
from metadist.algorithms.functional import Params, accuracy, over_tasks


def prototypes(support_z: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means of the support embeddings [S, D] → [N, D] (labels in [0, N))."""
    one_hot = (support_y[:, None] == torch.arange(ways, device=support_y.device)).to(support_z.dtype)  # [S, N]
    return (one_hot.T @ support_z) / one_hot.sum(0)[:, None]


def squared_distance_logits(query_z: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """−‖q − p‖² for every query and prototype: [Q, N]."""
    return -((query_z[:, None, :] - protos[None, :, :]) ** 2).sum(-1)


class ProtoNet(MetricLearner):
    name = "protonet"

    def _task_loss(self, params: Params, sx, sy, qx, qy, ways: int):
        protos = prototypes(self.forward(params, sx), sy, ways)
        logits = squared_distance_logits(self.forward(params, qx), protos)
        return self.loss(logits, qy), accuracy(logits, qy)


    def adapt(self, meta_params: Params, support_x, support_y, steps: int | None = None) -> Params:
        ways = self.ways(support_y)
        return {"prototypes": over_tasks(lambda x, y: prototypes(self.forward(meta_params, x), y, ways))(support_x, support_y)}

    def predict(self, meta_params: Params, adapted: Params, query_x) -> torch.Tensor:
        return over_tasks(lambda protos, x: squared_distance_logits(self.forward(meta_params, x), protos))(adapted["prototypes"], query_x)
