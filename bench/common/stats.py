"""Summaries of repeated figures and how they are written: the median with its range, percentiles."""

from __future__ import annotations

import statistics
from typing import Iterable


def spread(values: Iterable[float], name: str) -> dict[str, float]:
    """{name: median, min_<name>: smallest, max_<name>: largest} of the values."""
    values = list(values)
    return {name: statistics.median(values), f"min_{name}": min(values), f"max_{name}": max(values)}


def fmt_spread(result: dict | None, name: str, spec: str = ",.1f") -> str:
    """'median (min–max)' of a spread() in `result`; 'not run' if there is none."""
    if result is None:
        return "not run"
    return f"{result[name]:{spec}} ({result[f'min_{name}']:{spec}}–{result[f'max_{name}']:{spec}})"


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))  # ceil(n·p/100)
    return sorted_values[int(rank) - 1]
