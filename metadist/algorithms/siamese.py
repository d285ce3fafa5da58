"""Siamese networks (Koch et al., 2015): learn to verify "same class?" on pairs; classify by the most similar example.

Both images of a pair go through the same embedding network; the paper's head scores the pair by a weighted L1
distance between the embeddings,

    p(same | x₁, x₂) = σ(w · |z₁ − z₂| + b),      w [D] and b [] meta-parameters "siamese.weight", "siamese.bias".

Training pairs every query of an episode with every support example: [N·Q, N·K] pairs, of which each query has K
positives and (N − 1)·K negatives. The loss is binary cross-entropy with positives and negatives weighted to half
of it each, so an N-way episode does not teach "always different". "Adapting" is embedding the support set (no
weights change); the logit of class n for a query [Q, N] is the verification logit of its closest support example
of that class (the max over the class's K examples), which for K = 1 is the paper's one-shot rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metadist.algorithms.base import MetricLearner
from metadist.algorithms.functional import Params, accuracy, over_tasks
from metadist.algorithms.matching import one_hot

# The paper's initialisation of its fully connected layers: weights N(0, 0.2²), biases N(0.5, 0.01²).
WEIGHT_STD = 0.2
BIAS_MEAN, BIAS_STD = 0.5, 0.01


def verification_logits(weight: torch.Tensor, bias: torch.Tensor, query_z: torch.Tensor, support_z: torch.Tensor) -> torch.Tensor:
    """w · |q − s| + b for every query [Q, D] and support example [S, D]: [Q, S] (logits of p(same))."""
    return (query_z[:, None, :] - support_z[None, :, :]).abs() @ weight + bias


def class_logits(pair_logits: torch.Tensor, support_onehot: torch.Tensor) -> torch.Tensor:
    """Per class, the best pair logit over the class's support examples: [Q, S], [S, N] → [Q, N]."""
    in_class = support_onehot.T.bool()  # [N, S]
    return torch.where(in_class, pair_logits[:, None, :], -torch.inf).amax(dim=-1)


def balanced_pair_loss(pair_logits: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over pairs [Q, S], positives and negatives each weighted to half of the total."""
    same = same.to(pair_logits.dtype)
    weight = same / (2 * same.sum()) + (1 - same) / (2 * (1 - same).sum())
    return F.binary_cross_entropy_with_logits(pair_logits, same, weight=weight, reduction="sum")


class SiameseNetwork(MetricLearner):
    name = "siamese"
    extra_prefixes = ("siamese.",)

    def __init__(self, model: torch.nn.Module, kind: str, *, inner_lr: float, inner_steps: int, eval_inner_steps: int) -> None:
        super().__init__(model, kind, inner_lr=inner_lr, inner_steps=inner_steps, eval_inner_steps=eval_inner_steps)
        # Drawn here, just after the model is built, so the head's initial values depend only on the seed.
        self._head_init: Params = {
            "siamese.weight": torch.randn(self.embedding_size()) * WEIGHT_STD,
            "siamese.bias": BIAS_MEAN + torch.randn(()) * BIAS_STD,
        }

    def init_meta_params(self) -> Params:
        params = super().init_meta_params()
        like = next(iter(params.values()))
        return {**params, **{k: v.to(device=like.device, dtype=like.dtype) for k, v in self._head_init.items()}}

    # -- one task --------------------------------------------------------------------------------------------
    def _embed(self, meta_params: Params, x: torch.Tensor) -> torch.Tensor:
        return self.forward(self.model_params(meta_params), x)

    def _pair_logits(self, meta_params: Params, query_z: torch.Tensor, support_z: torch.Tensor) -> torch.Tensor:
        return verification_logits(meta_params["siamese.weight"], meta_params["siamese.bias"], query_z, support_z)

    def _task_loss(self, meta_params: Params, sx, sy, qx, qy, ways: int):
        support_z = self._embed(meta_params, sx)
        pair_logits = self._pair_logits(meta_params, self._embed(meta_params, qx), support_z)  # [Q, S]
        loss = balanced_pair_loss(pair_logits, qy[:, None] == sy[None, :])
        return loss, accuracy(class_logits(pair_logits, one_hot(sy, ways, pair_logits.dtype)), qy)

    # -- the learner -----------------------------------------------------------------------------------------

    def adapt(self, meta_params: Params, support_x, support_y, steps: int | None = None) -> Params:
        ways = self.ways(support_y)
        support_z = over_tasks(lambda x: self._embed(meta_params, x))(support_x)
        return {"support_z": support_z, "support_onehot": one_hot(support_y, ways, support_z.dtype)}

    def predict(self, meta_params: Params, adapted: Params, query_x) -> torch.Tensor:
        def one_task(support_z, support_onehot, x):
            return class_logits(self._pair_logits(meta_params, self._embed(meta_params, x), support_z), support_onehot)

        return over_tasks(one_task)(adapted["support_z"], adapted["support_onehot"], query_x)

    def evaluate(self, meta_params: Params, batch, steps: int | None = None) -> dict[str, torch.Tensor]:
        """Per-task [T] loss and accuracy; the loss is the balanced pair loss that training minimises (the base class
        would report cross-entropy over the class logits, a different quantity from compute_update's loss_after)."""
        ways = self.ways(batch.support_y)
        with torch.no_grad():
            losses, acc = over_tasks(lambda sx, sy, qx, qy: self._task_loss(meta_params, sx, sy, qx, qy, ways))(
                batch.support_x, batch.support_y, batch.query_x, batch.query_y
            )
        return {"loss_after": losses, "accuracy_after": acc}
