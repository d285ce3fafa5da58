"""Build the configured model for a task's input shape and output size."""

from __future__ import annotations

from torch import nn

from metadist.config import ModelConfig
from metadist.models.conv4 import Conv4
from metadist.models.mlp import MLP
from metadist.models.resnets import RESNET12_CHANNELS, ResNet12, WideResNet


def build_model(config: ModelConfig, *, input_shape: tuple[int, ...], outputs: int | None) -> nn.Module:
    """input_shape: [C, H, W] for images, [features] for mlp; outputs: ways, regression outputs, or None (embedding)."""
    if config.name == "conv4":
        channels, height, _ = input_shape
        small = height <= 32
        return Conv4(
            channels, outputs, hidden=config.hidden or (64 if small else 32), image_size=height,
            batch_norm=config.batch_norm == "transductive", downsample=config.downsample or ("stride" if small else "maxpool"),
            pool=config.pool,
        )
    if config.name in ("resnet12", "wrn"):
        if len(input_shape) != 3:
            raise ValueError(f"model.name {config.name!r} takes images [C, H, W]; this task's inputs are {list(input_shape)}")
        batch_norm = config.batch_norm == "transductive"
        if config.name == "wrn":
            return WideResNet(input_shape[0], outputs, depth=config.depth, widen=config.widen, batch_norm=batch_norm)
        first = config.hidden or RESNET12_CHANNELS[0]
        widths = tuple(max(1, round(c * first / RESNET12_CHANNELS[0])) for c in RESNET12_CHANNELS)
        return ResNet12(input_shape[0], outputs, channels=widths, batch_norm=batch_norm, drop_rate=config.drop_rate)
    hidden = config.hidden or 40
    return MLP(input_shape[0], (hidden, hidden), outputs or 1)
