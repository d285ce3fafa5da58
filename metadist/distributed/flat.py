"""Updates as they travel between actors: one flat, contiguous buffer per update, and the fixed-order sum.

A dict of tensors pickles tensor by tensor (1.25 ms to pickle and 1.6 ms to unpickle conv-4's 0.43 MiB); one numpy
buffer goes through Ray's object store without a copy (it is read in place from shared memory) and costs
microseconds. Every process lays parameters out the same way (`ParamLayout`, from the meta-parameters' order), so
only the buffer travels.

Sums are taken in a fixed order, element by element in float32, so the same parts summed in the same grouping
give the same bits wherever the sum runs (a reducer, the parameter server).

With train.precision 'bf16' a task worker's update travels in bfloat16 (half the bytes; numpy has no bfloat16, so
the buffer holds its bits as uint16) and is widened to float32 where it is read or summed; sums stay float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from metadist.algorithms.base import Update
from metadist.algorithms.functional import Params


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of the meta-parameters in a flat buffer."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, params: Params) -> ParamLayout:
        return cls(tuple(params), tuple(tuple(p.shape) for p in params.values()))

    @property
    def numel(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes)

    def flatten(self, tensors: Params) -> np.ndarray:
        """One float32 buffer holding `tensors` in layout order (one copy, from any device)."""
        flat = torch.cat([tensors[n].detach().reshape(-1).to("cpu", torch.float32) for n in self.names])
        return flat.numpy()

    def unflatten(self, buffer: np.ndarray) -> Params:
        """Tensors named and shaped as the layout says: views of `buffer` itself when it is a writable float32 array
        (a sum just made), else of one writable copy (a buffer read in place from the object store is read-only; a
        bfloat16 one, widened)."""
        buffer = as_float32(buffer)
        if not (buffer.flags.writeable and buffer.dtype == np.float32):
            buffer = np.array(buffer, dtype=np.float32, copy=True)
        flat = torch.from_numpy(buffer)
        sizes = [int(np.prod(s)) for s in self.shapes]
        return {n: part.view(shape) for n, part, shape in zip(self.names, flat.split(sizes), self.shapes)}


@dataclass(frozen=True)
class FlatUpdate:
    """An `Update` with its tensors in one buffer (see ParamLayout)."""

    kind: str
    buffer: np.ndarray
    num_tasks: int
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, update: Update, layout: ParamLayout, precision: str = "fp32") -> FlatUpdate:
        buffer = layout.flatten(update.tensors)
        if precision == "bf16":
            buffer = torch.from_numpy(buffer).to(torch.bfloat16).view(torch.uint16).numpy()
        return cls(update.kind, buffer, update.num_tasks, dict(update.metrics))

    def to_update(self, layout: ParamLayout) -> Update:
        return Update(self.kind, layout.unflatten(self.buffer), self.num_tasks, dict(self.metrics))

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)


def as_float32(buffer: np.ndarray) -> np.ndarray:
    """A float32 buffer as it is; a bfloat16 one (its bits as uint16) widened to float32, exactly."""
    if buffer.dtype == np.uint16:
        return torch.from_numpy(np.array(buffer, copy=True)).view(torch.bfloat16).float().numpy()  # a copy: may be read-only
    return buffer


def sum_in_order(parts: Sequence[FlatUpdate]) -> FlatUpdate:
    """((parts[0] + parts[1]) + parts[2]) + ...: float32, element by element, in the order given."""
    if not parts:
        raise ValueError("nothing to sum")
    kinds = {p.kind for p in parts}
    if len(kinds) > 1:
        raise ValueError(f"cannot add updates of different kinds: {sorted(kinds)}")
    total = np.array(as_float32(parts[0].buffer), dtype=np.float32, copy=True)
    metrics = dict(parts[0].metrics)
    for part in parts[1:]:
        np.add(total, as_float32(part.buffer), out=total)
        for k, v in part.metrics.items():
            metrics[k] = metrics.get(k, 0.0) + v
    return FlatUpdate(parts[0].kind, total, sum(p.num_tasks for p in parts), metrics)


def group_bounds(slices: int, groups: int) -> list[range]:
    """`groups` contiguous runs of slice indices covering range(slices): the slices each reducer sums."""
    groups = max(1, min(groups, slices))
    return [range(g * slices // groups, (g + 1) * slices // groups) for g in range(groups)]
