"""The standard conv-4 backbone of the few-shot literature (Vinyals et al. 2016; Finn et al. 2017).

Four blocks of 3×3 conv → batch norm → ReLU → downsampling by 2; 64 filters for 28×28 Omniglot, 32 for 84×84
images. Omniglot downsamples with stride-2 convolutions and larger images with 2×2 max-pooling, as in the MAML
reference code (stride-2 also does a quarter of the work in the later blocks). Batch norm uses the statistics of the batch it sees — the support set while adapting, the query set
when predicting — and keeps no running averages, as in the MAML papers ("transductive"). That keeps the
model a pure function of its parameters, which torch.func needs.

The head reads the last block's feature map flattened (pool="flatten", 64·2·2 = 256 features at 28×28) or
averaged over its positions (pool="mean", 64 features): the latter is what the MAML reference code does for
Omniglot (`tf.reduce_mean` over the 2×2 map) and what learn2learn's OmniglotCNN does.

`Conv4.forward_tasks` runs T tasks at once, each with its own parameters (what MAML's inner loop needs), without
vmap: see its docstring and docs/benchmarks.md ("Learning layer") for why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metadist.models.twice_differentiable import BatchNorm, GroupedConv2d

BN_EPS = 1e-5


class TransductiveBatchNorm2d(nn.Module):
    """Batch norm with batch statistics always (no running mean/var buffers); affine parameters only."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In the parameters' dtype (fp32) under bf16 autocast: statistics of bf16 activations lose digits, and
        # torch.func's batching rule for batch norm's backward fails on mixed dtypes.
        return F.batch_norm(x.to(self.weight.dtype), None, None, self.weight, self.bias, training=True, eps=BN_EPS)


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
        pool: str = "flatten",
    ) -> None:
        super().__init__()
        if downsample not in ("stride", "maxpool"):
            raise ValueError(f"downsample must be 'stride' or 'maxpool', got {downsample!r}")
        if pool not in ("flatten", "mean"):
            raise ValueError(f"pool must be 'flatten' or 'mean', got {pool!r}")
        self.pool = pool
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
        self.embedding_dim = hidden * (max(side, 1) ** 2 if pool == "flatten" else 1)
        self.head = nn.Linear(self.embedding_dim, ways) if ways else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        return z.flatten(1) if self.pool == "flatten" else z.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, embed_only: bool = False) -> torch.Tensor:
        """Logits, or the embedding with embed_only (what functional_call can ask for: it calls forward only)."""
        z = self.embed(x)
        return self.head(z) if self.head is not None and not embed_only else z

    def forward_tasks(self, params: dict[str, torch.Tensor], x: torch.Tensor, embed_only: bool = False) -> torch.Tensor:
        """T tasks at once, each with its own parameters: params[name] [T, *shape], x [T, B, C, H, W] → [T, B, out].

        Equal to vmap(functional_call(self, ...)) over the task axis, but computed with T folded into the channel
        axis ([B, T·C, H, W]): each convolution is then one grouped convolution (groups = T), each batch norm one
        call whose channels are the tasks' channels (so statistics stay per task and channel), and the head one
        batched matrix product. Convolution and batch norm go through autograd Functions whose backward passes are
        themselves differentiable by hand-written formulas (metadist.models.twice_differentiable): MAML's second-order
        gradient differentiates the inner loop's backward pass, and PyTorch's own double backward of these two ops
        is slow on CPU (per-group loops, a dozen full-size elementwise passes for batch norm).
        """
        if torch.is_autocast_enabled(x.device.type):
            # The hand-written double backward below is fp32 only: under bf16 autocast this route stays fp32.
            with torch.autocast(x.device.type, enabled=False):
                return self.forward_tasks(params, x.float(), embed_only)
        tasks, batch, channels, height, width = x.shape
        # [B, T·C, H, W], contiguous (NCHW). Not channels-last: oneDNN's grouped convolution backward is faster in it
        # but, in PyTorch 2.13 on CPU, returns wrong input gradients for some groups at realistic sizes (conv-4 with
        # 32-64 filters, 8 tasks, 25 images: errors of ~1e-3 relative in the meta-gradient); tests/test_forward_tasks.py
        # checks these sizes against a per-task float64 reference.
        h = x.transpose(0, 1).reshape(batch, tasks * channels, height, width)
        for index, layer in enumerate(self.features):
            name = f"features.{index}"
            if isinstance(layer, nn.Conv2d):
                weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
                h = GroupedConv2d.apply(
                    h, weight.reshape(-1, *weight.shape[2:]), bias.reshape(-1), layer.stride, layer.padding, tasks
                )
            elif isinstance(layer, TransductiveBatchNorm2d):
                h = BatchNorm.apply(h, params[f"{name}.weight"].reshape(-1), params[f"{name}.bias"].reshape(-1), BN_EPS)
            elif isinstance(layer, nn.ReLU):
                h = F.relu(h)
            elif isinstance(layer, nn.MaxPool2d):
                h = F.max_pool2d(h, layer.kernel_size)
            elif not isinstance(layer, nn.Identity):
                raise TypeError(f"Conv4.forward_tasks: no task-batched form for {type(layer).__name__} ({name})")
        z = h.flatten(2) if self.pool == "flatten" else h.mean(dim=(2, 3), keepdim=True).flatten(2)  # [B, T·C, ·]
        z = z.reshape(batch, tasks, -1).transpose(0, 1)  # [T, B, D], each task's features in flatten(1) order
        if self.head is None or embed_only:
            return z
        return torch.baddbmm(params["head.bias"].unsqueeze(1), z, params["head.weight"].transpose(1, 2))
