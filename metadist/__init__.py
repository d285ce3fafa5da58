"""metadist: distributed meta-training on Ray with Arrow task shards and MLflow tracking.

The Python API, for people with their own model and data loop (learn2learn-style), and `fit` to run a job:

    >>> import metadist
    >>> maml = metadist.MAML(my_module, inner_lr=0.4, first_order=False)   # ANIL, MetaSGD, Reptile, ProtoNet too
    >>> step = maml.compute_update(support_x, support_y, query_x, query_y); step.backward(); optimizer.step()
    >>> result = metadist.fit("jobs/omniglot-5way-1shot-maml.yaml", overrides=["train.steps=100"])

Imported on first use, so `metadist --help` and the lower layers do not pay for torch and the trainers.
"""

from metadist.version import __version__

_API = {"ANIL", "MAML", "Episodes", "Learner", "MetaSGD", "MetaStep", "ProtoNet", "Reptile", "fit"}
__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):
    if name in _API:
        import metadist.api

        return getattr(metadist.api, name)
    raise AttributeError(f"module 'metadist' has no attribute {name!r}")
