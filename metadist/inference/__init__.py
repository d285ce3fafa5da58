"""Using a meta-trained checkpoint on a user's own few-shot problem: adapt to a support set, classify queries (CLI `predict`, MLflow pyfunc, gRPC)."""

from metadist.inference.classifier import AdaptedTask, FewShotClassifier, Prediction
from metadist.inference.folders import read_queries, read_support

__all__ = ["AdaptedTask", "FewShotClassifier", "Prediction", "read_queries", "read_support"]
