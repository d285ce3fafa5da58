"""Batches of episodes, stacked so that one vmapped call adapts all T tasks at once."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


def _moved(value, device: torch.device | str):
    return value.to(device) if isinstance(value, torch.Tensor) else value


@dataclass
class _Batch:
    support_x: torch.Tensor  # [T, ...]: every batch leads with the task axis

    def to(self, device: torch.device | str):
        return type(self)(**{f.name: _moved(getattr(self, f.name), device) for f in fields(self)})

    def __len__(self) -> int:
        return self.support_x.shape[0]


@dataclass
class ClassificationBatch(_Batch):
    """T N-way K-shot episodes with Q queries per class; examples are ordered class by class.

    support_x [T, N·K, C, H, W] float32 in [0, 1]   support_y [T, N·K] int64 in [0, N)
    query_x   [T, N·Q, C, H, W]                      query_y   [T, N·Q]
    class_index [T, N]    each label's class, as an index into the shard set's manifest
    quarter_turns [T, N]  each label's rotation (0-3 quarter turns; a rotated class is a class of its own)
    mirrored [T, N]       each label's reflection (bool; mirrored before it is turned; a class of its own too)
    task_indices [T]
    source_index [T]      each episode's training source: its position in data.train's list (0 with one source);
                          class_index indexes that source's manifest
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    class_index: torch.Tensor
    quarter_turns: torch.Tensor
    mirrored: torch.Tensor
    task_indices: torch.Tensor
    source_index: torch.Tensor
    step: int


@dataclass
class RegressionBatch(_Batch):
    """T regression tasks: support_x [T, K, 1], support_y [T, K, 1], query_x [T, Q, 1], query_y [T, Q, 1].

    task_params [T, P] holds each task's generating parameters (amplitude and phase for the sinusoid).
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    task_params: torch.Tensor
    task_indices: torch.Tensor
    step: int
