"""Prototypical Networks (Snell et al., 2017): classify by distance to class prototypes in a learned space.

A prototype is the mean embedding of a class's support examples; logits are negative squared Euclidean
distances from each query's embedding to the N prototypes. "Adapting" is computing prototypes: no weights
change, so there is no inner loop and no before-adaptation score. At test time the prototypes can also be refined
over the queries classified together (transductive_steps: soft k-means, Ren et al. 2018).
"""

from __future__ import annotations

import torch

from metadist.algorithms.base import MetricLearner
from metadist.algorithms.functional import Params, accuracy, over_tasks


def class_counts(support_y: torch.Tensor, ways: int) -> torch.Tensor:
    """Support examples of each class [N] (labels in [0, N)), as floats."""
    return (support_y[:, None] == torch.arange(ways, device=support_y.device)).sum(0).float()


def prototypes(support_z: torch.Tensor, support_y: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means of the support embeddings [S, D] → [N, D] (labels in [0, N))."""
    one_hot = (support_y[:, None] == torch.arange(ways, device=support_y.device)).to(support_z.dtype)  # [S, N]
    return (one_hot.T @ support_z) / one_hot.sum(0)[:, None]


def squared_distance_logits(query_z: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """−‖q − p‖² for every query and prototype: [Q, N]."""
    return -((query_z[:, None, :] - protos[None, :, :]) ** 2).sum(-1)


def refine_prototypes(protos: torch.Tensor, counts: torch.Tensor, query_z: torch.Tensor, steps: int) -> torch.Tensor:
    """Soft k-means over the queries (Ren et al. 2018, eq. 3), `steps` times: each query joins every class with its
    softmax probability under the current prototypes as weight, and a prototype becomes the weighted mean of its
    class's support examples (weight 1 each; `counts` [N] of them, mean `protos` [N, D]) and the queries [Q, D].
    In 1-shot a prototype is one example, where the queries its class owns describe the class far better."""
    support_sums = protos * counts[:, None].to(protos.dtype)
    for _ in range(steps):
        weights = torch.softmax(squared_distance_logits(query_z, protos), dim=-1)  # [Q, N]
        protos = (support_sums + weights.T @ query_z) / (counts.to(protos.dtype) + weights.sum(0))[:, None]
    return protos


class ProtoNet(MetricLearner):
    name = "protonet"
    # Soft k-means steps over the queries at test time (algorithm.transductive_steps); 0 is off.
    transductive_steps: int = 0
    config_settings = (*MetricLearner.config_settings, "transductive_steps")

    def _task_loss(self, params: Params, sx, sy, qx, qy, ways: int):
        protos = prototypes(self.forward(params, sx), sy, ways)
        logits = squared_distance_logits(self.forward(params, qx), protos)
        return self.loss(logits, qy), accuracy(logits, qy)

    def adapt(self, meta_params: Params, support_x, support_y, steps: int | None = None) -> Params:
        return self._adapted(over_tasks(lambda x: self.forward(meta_params, x))(support_x), support_y)

    def _adapted(self, support_z: torch.Tensor, support_y: torch.Tensor) -> Params:
        """Each task's prototypes [T, N, D] and the support examples they are the mean of [T, N]."""
        ways = self.ways(support_y)
        return {
            "prototypes": over_tasks(lambda z, y: prototypes(z, y, ways))(support_z, support_y),
            "counts": over_tasks(lambda y: class_counts(y, ways))(support_y),
        }

    def predict(self, meta_params: Params, adapted: Params, query_x) -> torch.Tensor:
        return over_tasks(lambda protos, x: squared_distance_logits(self.forward(meta_params, x), protos))(adapted["prototypes"], query_x)

    # -- evaluation: test-time shifts and transductive refinement ----------------------------------------------
    # With eval_shift, each example's embedding is the mean of its shifted copies' (MetricLearner.embed_at_test): the
    # prototypes are the base class's mean over all the support's copies, `counts` stay the examples', and −‖q̄ − p‖²
    # differs from the base class's mean of the copies' −‖q_i − p‖² by the copies' spread, the same for every class,
    # so the probabilities are the same.
    def adapt_at_test(self, meta_params: Params, support_x, support_y, steps: int | None = None) -> Params:
        embed = lambda x: self.forward(meta_params, x)  # noqa: E731
        return self._adapted(self.embed_at_test(embed, support_x, together=True), support_y)

    def predict_at_test(self, meta_params: Params, adapted: Params, query_x) -> torch.Tensor:
        """Distance logits of each query's embedding to the prototypes refined over the queries transductive_steps
        times."""
        query_z = self.embed_at_test(lambda x: self.forward(meta_params, x), query_x, together=False)
        steps = self.transductive_steps
        return over_tasks(lambda protos, counts, z: squared_distance_logits(z, refine_prototypes(protos, counts, z, steps)))(
            adapted["prototypes"], adapted["counts"], query_z
        )
