"""What both sides of bench/backbone_speed.py share (plain torch, importable under either interpreter): the episode
shape, the synthetic episodes, and what a side reports."""

from __future__ import annotations

WAYS, SHOTS, QUERIES, TASKS, SIZE = 5, 1, 15, 4, 84


def episodes(count: int, seed: int = 0):
    """`count` meta-batches of TASKS synthetic 5-way 1-shot episodes, 15 queries per class, 84×84 RGB in [0, 1]:
    (support_x [T, N·K, 3, 84, 84], support_y [T, N·K], query_x [T, N·Q, ...], query_y [T, N·Q]), labels class by class."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    support_y = torch.arange(WAYS).repeat_interleave(SHOTS).expand(TASKS, -1).contiguous()
    query_y = torch.arange(WAYS).repeat_interleave(QUERIES).expand(TASKS, -1).contiguous()
    return [(torch.rand(TASKS, WAYS * SHOTS, 3, SIZE, SIZE, generator=generator), support_y,
             torch.rand(TASKS, WAYS * QUERIES, 3, SIZE, SIZE, generator=generator), query_y) for _ in range(count)]


def side_result(tasks_per_s: float, peak_mb: float, version: str) -> dict:
    """One side's figures, as its worker process emits them (common.results.emit)."""
    return {"tasks_per_s": tasks_per_s, "peak_rss_mb": peak_mb, "version": version}
