"""The networks (conv-4, ResNet-12, wide ResNets, the regression MLP) as plain modules with no training, data or logging code, and the twice-differentiable ops they run on."""

from metadist.models.conv4 import Conv4
from metadist.models.mlp import MLP
from metadist.models.registry import build_model
from metadist.models.resnets import ResNet12, WideResNet

__all__ = ["MLP", "Conv4", "ResNet12", "WideResNet", "build_model"]
