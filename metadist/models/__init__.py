"""The networks (conv-4, the regression MLP) as plain modules with no training, data or logging code, and the twice-differentiable ops they run on."""

from metadist.models.conv4 import Conv4
from metadist.models.mlp import MLP
from metadist.models.registry import build_model

__all__ = ["MLP", "Conv4", "build_model"]
