"""The sinusoid regression network of the MAML paper: 1 → 40 → 40 → 1 with ReLU."""

from __future__ import annotations

from torch import nn


class MLP(nn.Module):
    HEAD = ("head.weight", "head.bias")

    def __init__(self, in_features: int = 1, hidden: tuple[int, ...] = (40, 40), out_features: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.embedding_dim = width
        self.head = nn.Linear(width, out_features)

    def embed(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))
