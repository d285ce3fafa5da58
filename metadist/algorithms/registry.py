"""Name → learner class, and construction from the configuration."""

from __future__ import annotations

from torch import nn

from metadist.algorithms.anil import ANIL
from metadist.algorithms.base import MetaLearner
from metadist.algorithms.maml import MAML, FirstOrderMAML
from metadist.algorithms.metasgd import MetaSGD
from metadist.algorithms.model_averaging import ModelAveraging
from metadist.algorithms.protonet import ProtoNet
from metadist.algorithms.reptile import Reptile
from metadist.config import AlgorithmConfig

LEARNERS: dict[str, type[MetaLearner]] = {
    cls.name: cls for cls in (MAML, FirstOrderMAML, Reptile, ModelAveraging, ANIL, MetaSGD, ProtoNet)
}
METRIC_LEARNERS = {"protonet", "matching", "siamese"}  # embed only: the model has no classification head


def build_learner(config: AlgorithmConfig, model: nn.Module, kind: str) -> MetaLearner:
    if config.name not in LEARNERS:
        raise ValueError(f"algorithm.name {config.name!r} is not available; choose one of {sorted(LEARNERS)}")
    return LEARNERS[config.name](
        model, kind, inner_lr=config.inner_lr, inner_steps=config.inner_steps, eval_inner_steps=config.eval_inner_steps
    )
