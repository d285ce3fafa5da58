"""Name → learner class, and construction from the configuration."""

from __future__ import annotations

from torch import nn

from metadist.algorithms.anil import ANIL
from metadist.algorithms.base import MetaLearner
from metadist.algorithms.maml import MAML, FirstOrderMAML
from metadist.algorithms.matching import MatchingNetworks
from metadist.algorithms.metasgd import MetaSGD
from metadist.algorithms.model_averaging import ModelAveraging
from metadist.algorithms.protonet import ProtoNet
from metadist.algorithms.reptile import Reptile
from metadist.algorithms.siamese import SiameseNetwork
from metadist.config import AlgorithmConfig

LEARNERS: dict[str, type[MetaLearner]] = {
    cls.name: cls
    for cls in (MAML, FirstOrderMAML, Reptile, ModelAveraging, ANIL, MetaSGD, ProtoNet, MatchingNetworks, SiameseNetwork)
}
METRIC_LEARNERS = {"protonet", "matching", "siamese"}  # embed only: the model has no classification head


def build_learner(config: AlgorithmConfig, model: nn.Module, kind: str) -> MetaLearner:
    if config.name not in LEARNERS:
        raise ValueError(f"algorithm.name {config.name!r} is not available; choose one of {sorted(LEARNERS)}")
    return LEARNERS[config.name].from_config(config, model, kind)
