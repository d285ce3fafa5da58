"""Build the configured model for a task's input shape and output size."""

from __future__ import annotations

from torch import nn

from metadist.config import ModelConfig
from metadist.models.conv4 import Conv4
from metadist.models.mlp import MLP


def build_model(config: ModelConfig, *, input_shape: tuple[int, ...], outputs: int | None) -> nn.Module:
    """input_shape: [C, H, W] for conv4, [features] for mlp; outputs: ways, regression outputs, or None (embedding)."""
    if config.name == "conv4":
        channels, height, _ = input_shape
        small = height <= 32
        return Conv4(
            channels, outputs, hidden=config.hidden or (64 if small else 32), image_size=height,
            batch_norm=config.batch_norm == "transductive", downsample=config.downsample or ("stride" if small else "maxpool"),
            pool=config.pool,
        )
    hidden = config.hidden or 40
    return MLP(input_shape[0], (hidden, hidden), outputs or 1)
