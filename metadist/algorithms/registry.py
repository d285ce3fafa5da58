"""Name → learner class, and construction from the configuration."""

from __future__ import annotations

from torch import nn

from metadist.algorithms.anil import ANIL
from metadist.algorithms.base import MetaLearner
from metadist.algorithms.maml import MAML, FirstOrderMAML
from metadist.algorithms.matching import MatchingNetworks
from metadist.algorithms.meta_lstm import MetaLSTM
from metadist.algorithms.metasgd import MetaSGD
from metadist.algorithms.model_averaging import ModelAveraging
from metadist.algorithms.protonet import ProtoNet
from metadist.algorithms.reptile import Reptile
from metadist.algorithms.siamese import SiameseNetwork
from metadist.algorithms.snail import SNAIL
from metadist.config import AlgorithmConfig

LEARNERS: dict[str, type[MetaLearner]] = {
    cls.name: cls
    for cls in (MAML, FirstOrderMAML, Reptile, ModelAveraging, ANIL, MetaSGD, MetaLSTM, ProtoNet, MatchingNetworks, SiameseNetwork, SNAIL)
}
METRIC_LEARNERS = {"protonet", "matching", "siamese", "snail"}  # embed only: the model has no classification head


def build_learner(config: AlgorithmConfig, model: nn.Module, kind: str, *, ways: int = 5, shots: int = 1) -> MetaLearner:
    """ways, shots: the training episode's shape, for a learner whose parameters depend on it (SNAIL's output layer
    and sequence length); the others ignore them."""
    if config.name not in LEARNERS:
        raise ValueError(f"algorithm.name {config.name!r} is not available; choose one of {sorted(LEARNERS)}")
    cls = LEARNERS[config.name]
    episode = {"ways": ways, "shots": shots} if getattr(cls, "needs_episode", False) else {}
    return cls.from_config(config, model, kind, **episode)
