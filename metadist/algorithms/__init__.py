"""The meta-learning algorithms and the outer optimizer, as pure torch.func functions of (meta-parameters, batch of episodes).

Each learner returns the update a worker would send (a summed query-loss gradient or Reptile delta, with
metrics) and adapts/predicts for evaluation. No Ray, no I/O, no global state: the distributed workers call
exactly these functions.
"""

from metadist.algorithms.base import MetaLearner, Update
from metadist.algorithms.matching import MatchingNetworks
from metadist.algorithms.registry import LEARNERS, METRIC_LEARNERS, build_learner
from metadist.algorithms.siamese import SiameseNetwork

__all__ = ["LEARNERS", "METRIC_LEARNERS", "MatchingNetworks", "MetaLearner", "SiameseNetwork", "Update", "build_learner"]
