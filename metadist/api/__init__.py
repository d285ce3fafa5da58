"""The Python API: meta-learners over any `nn.Module` with plain tensors in (`MAML`, `ProtoNet` ...), and `fit`, which runs a job as `metadist train` does."""

from metadist.api.fit import fit, resolve_job, run_job
from metadist.api.learners import ANIL, MAML, Episodes, Learner, MetaSGD, MetaStep, ProtoNet, Reptile

__all__ = ["ANIL", "MAML", "Episodes", "Learner", "MetaSGD", "MetaStep", "ProtoNet", "Reptile", "fit", "resolve_job", "run_job"]
