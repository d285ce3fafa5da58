"""Distributed meta-training on Ray: task workers that each own a GPU, and a parameter-server actor.

The only package in metadist that imports Ray. The learning maths stays in the learners and the outer optimizer;
the actors here are thin shells around them, and the trainer reuses the local trainer's loop (see docs/distributed.md).

>>> from metadist.distributed import DistributedTrainer
>>> result = DistributedTrainer(job).run()     # job.distributed.workers >= 1
"""

from metadist.distributed.cluster import ClusterError, connect
from metadist.distributed.trainer import DistributedTrainer, ParameterServerLost, slice_bounds

__all__ = ["ClusterError", "DistributedTrainer", "ParameterServerLost", "connect", "slice_bounds"]
