"""The standard conv-4 backbone of the few-shot literature (Vinyals et al. 2016; Finn et al. 2017).

Four blocks of 3×3 conv → batch norm → ReLU → downsampling by 2; 64 filters for 28×28 Omniglot, 32 for 84×84
images. Omniglot downsamples with stride-2 convolutions and larger images with 2×2 max-pooling, as in the MAML
reference code (stride-2 also does a quarter of the work in the later blocks). Batch norm uses the statistics of the batch it sees — the support set while adapting, the query set
when predicting — and keeps no running averages, as in the MAML papers ("transductive"). That keeps the
model a pure function of its parameters, which torch.func needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TransductiveBatchNorm2d(nn.Module):
    """Batch norm with batch statistics always (no running mean/var buffers); affine parameters only."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=1e-5)


class Conv4(nn.Module):
    """x [B, C, H, W] → logits [B, ways] (or embeddings [B, D] when ways is None)."""

    HEAD = ("head.weight", "head.bias")  # the parameters ANIL adapts

    def __init__(
        self,
        in_channels: int = 1,
        ways: int | None = 5,
        hidden: int = 64,
        image_size: int = 28,
        batch_norm: bool = True,
        downsample: str = "stride",
    ) -> None:
        super().__init__()
        if downsample not in ("stride", "maxpool"):
            raise ValueError(f"downsample must be 'stride' or 'maxpool', got {downsample!r}")
        blocks: list[nn.Module] = []
        channels = in_channels
        for _ in range(4):
            stride = 2 if downsample == "stride" else 1
            blocks += [
                nn.Conv2d(channels, hidden, 3, stride=stride, padding=1),
                TransductiveBatchNorm2d(hidden) if batch_norm else nn.Identity(),
                nn.ReLU(),
            ]
            if downsample == "maxpool":
                blocks.append(nn.MaxPool2d(2))
            channels = hidden
        self.features = nn.Sequential(*blocks)
        side = image_size
        for _ in range(4):
            side = (side + 1) // 2 if downsample == "stride" else side // 2
        self.embedding_dim = hidden * max(side, 1) ** 2
        self.head = nn.Linear(self.embedding_dim, ways) if ways else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        return self.head(z) if self.head is not None else z
