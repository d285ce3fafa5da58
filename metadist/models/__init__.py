"""Models: plain modules, no training, data or logging code. Learners call them with torch.func.functional_call."""

from metadist.models.conv4 import Conv4
from metadist.models.mlp import MLP
from metadist.models.registry import build_model

__all__ = ["MLP", "Conv4", "build_model"]
