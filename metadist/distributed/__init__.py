"""Distributed meta-training on Ray: task workers that each own a GPU (or CPU slots), a parameter-server actor, and the step schedules between them.

The only package in metadist, besides the job-server client (metadist.submission), that imports Ray. The learning
maths stays in the learners and the outer optimizer; the actors here are thin shells around them, and the trainer
is the shared loop (metadist.training.loop) over a distributed step source (see docs/distributed.md).

>>> from metadist.distributed import DistributedTrainer
>>> result = DistributedTrainer(job).run()     # job.distributed.workers >= 1
"""

from metadist.distributed.cluster import ClusterError, connect
from metadist.distributed.failures import ParameterServerLost
from metadist.distributed.sync_steps import slice_bounds
from metadist.distributed.trainer import DistributedSteps, DistributedTrainer

__all__ = ["ClusterError", "DistributedSteps", "DistributedTrainer", "ParameterServerLost", "connect", "slice_bounds"]
