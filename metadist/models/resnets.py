"""The residual backbones of the few-shot literature on 84-pixel colour images: ResNet-12 and WRN-28-10.

ResNet-12 (Oreshkin et al., 2018; Lee et al., 2019 "MetaOptNet"; the 64-160-320-640 variant): four residual blocks,
each three 3×3 conv → batch norm → LeakyReLU(0.1) layers with a 1×1 conv + batch norm shortcut, then 2×2 max-pooling;
an 84×84 image ends as 640 channels of 5×5, averaged into a 640-dimensional embedding. 12.4 M parameters.

WRN-28-10 (Zagoruyko & Komodakis, 2016; as used by Rusu et al. 2019 and Mangla et al. 2020): a 3×3 stem of 16
filters, three groups of four pre-activation wide blocks (160, 320, 640 filters; strides 1, 2, 2), batch norm, ReLU,
global average pooling: a 640-dimensional embedding. 36.5 M parameters.

Batch norm is transductive here as in conv-4 (metadist.models.conv4): the statistics of the batch it sees (the support
set while adapting, the query set when predicting), no running averages, the same at training and test time. That
keeps each network a pure function of its parameters, which torch.func's vmap and MAML's inner loop need.

DropBlock (Ghiasi et al., 2018), ResNet-12's regulariser in MetaOptNet, is an option (`drop_rate`): it zeroes
block_size × block_size squares of the feature maps of the last two blocks while the module is in training mode
(`module.train()`); evaluation runs the module in eval mode (metadist.training.evaluation), where it does nothing.
Inside vmap it needs different random draws per task (torch.func's randomness="different").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metadist.models.conv4 import TransductiveBatchNorm2d

RESNET12_CHANNELS = (64, 160, 320, 640)
LEAKY_SLOPE = 0.1  # MetaOptNet's
DROP_BLOCK_SIZE = 5  # MetaOptNet's, for the 10×10 and 5×5 maps of the last two blocks at 84 px


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return TransductiveBatchNorm2d(channels) if batch_norm else nn.Identity()


class DropBlock(nn.Module):
    """Zeroes random block_size × block_size squares with probability drop_rate per position, rescaling the rest; in
    training mode only."""

    def __init__(self, drop_rate: float, block_size: int = DROP_BLOCK_SIZE) -> None:
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.drop_rate = drop_rate
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_rate == 0.0:
            return x
        block = min(self.block_size, x.shape[-1], x.shape[-2])
        # Seed positions such that the expected dropped fraction is drop_rate (Ghiasi et al., eq. 1).
        valid = (x.shape[-2] - block + 1) * (x.shape[-1] - block + 1)
        gamma = self.drop_rate * x.shape[-2] * x.shape[-1] / (block**2 * max(valid, 1))
        seeds = (torch.rand_like(x[:, :1]) < gamma).to(x.dtype)
        dropped = F.max_pool2d(seeds, kernel_size=block, stride=1, padding=block // 2)
        dropped = dropped[..., : x.shape[-2], : x.shape[-1]]
        keep = 1.0 - dropped
        return x * keep * (keep.numel() / keep.sum().clamp(min=1.0))


class ResidualBlock12(nn.Module):
    """ResNet-12's block: 3 × (3×3 conv, batch norm, LeakyReLU), a 1×1 conv + batch norm shortcut, 2×2 max-pool."""

    def __init__(self, in_channels: int, channels: int, batch_norm: bool, drop_rate: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=not batch_norm)
        self.bn1 = _norm(channels, batch_norm)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm)
        self.bn2 = _norm(channels, batch_norm)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm)
        self.bn3 = _norm(channels, batch_norm)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=not batch_norm), _norm(channels, batch_norm))
        self.drop = DropBlock(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: batch norm's backward needs its input, not its output, so the activation may overwrite it and the
        # backward pass keeps one tensor fewer per layer (the same gradients, bit for bit).
        h = F.leaky_relu(self.bn1(self.conv1(x)), LEAKY_SLOPE, inplace=True)
        h = F.leaky_relu(self.bn2(self.conv2(h)), LEAKY_SLOPE, inplace=True)
        h = self.bn3(self.conv3(h))
        h = F.leaky_relu(h + self.shortcut(x), LEAKY_SLOPE, inplace=True)
        return self.drop(F.max_pool2d(h, 2))


class ResNet12(nn.Module):
    """x [B, C, H, W] → logits [B, ways] (or embeddings [B, 640] when ways is None)."""

    HEAD = ("head.weight", "head.bias")  # the parameters ANIL adapts

    def __init__(self, in_channels: int = 3, ways: int | None = 5, channels: tuple[int, ...] = RESNET12_CHANNELS,
                 batch_norm: bool = True, drop_rate: float = 0.0) -> None:
        super().__init__()
        blocks = []
        width = in_channels
        for index, out in enumerate(channels):
            # DropBlock in the last two blocks, as MetaOptNet places it (the first two have large, redundant maps).
            blocks.append(ResidualBlock12(width, out, batch_norm, drop_rate if index >= len(channels) - 2 else 0.0))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.embedding_dim = width
        self.head = nn.Linear(width, ways) if ways else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, embed_only: bool = False) -> torch.Tensor:
        """Logits, or the embedding with embed_only (what functional_call can ask for: it calls forward only)."""
        z = self.embed(x)
        return self.head(z) if self.head is not None and not embed_only else z


class WideBlock(nn.Module):
    """A pre-activation wide residual block: BN, ReLU, 3×3 conv (stride), BN, ReLU, 3×3 conv; 1×1 conv shortcut when
    the shape changes."""

    def __init__(self, in_channels: int, channels: int, stride: int, batch_norm: bool) -> None:
        super().__init__()
        self.bn1 = _norm(in_channels, batch_norm)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _norm(channels, batch_norm)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        same = in_channels == channels and stride == 1
        self.shortcut = nn.Identity() if same else nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(x))
        shortcut = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(h)
        h = self.conv1(h)
        h = self.conv2(F.relu(self.bn2(h)))
        return h + shortcut


class WideResNet(nn.Module):
    """WRN-depth-widen: x [B, C, H, W] → logits [B, ways] (or embeddings [B, 64·widen] when ways is None)."""

    HEAD = ("head.weight", "head.bias")

    def __init__(self, in_channels: int = 3, ways: int | None = 5, depth: int = 28, widen: int = 10,
                 batch_norm: bool = True) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 (16, 22, 28, 40 ...), got {depth}")
        per_group = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        width = 16
        for out, stride in zip(widths, (1, 2, 2)):
            for index in range(per_group):
                blocks.append(WideBlock(width, out, stride if index == 0 else 1, batch_norm))
                width = out
        self.blocks = nn.Sequential(*blocks)
        self.bn = _norm(width, batch_norm)
        self.embedding_dim = width
        self.head = nn.Linear(width, ways) if ways else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.blocks(self.stem(x)))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, embed_only: bool = False) -> torch.Tensor:
        """Logits, or the embedding with embed_only (what functional_call can ask for: it calls forward only)."""
        z = self.embed(x)
        return self.head(z) if self.head is not None and not embed_only else z
