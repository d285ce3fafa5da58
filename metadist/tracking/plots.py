"""Figures of a run, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, thread-safe).

>>> save_learning_curve(history, "outputs/omniglot-5way-1shot/learning_curve.png", title="omniglot-5way-1shot")

`history` is the trainer's list of logged rows, `{"step": int, <metric>: float, ...}`. Training rows and
held-out rows may be separate entries at the same step. Metrics are drawn by name:
  *loss*       → the loss panel;  *accuracy* → the accuracy panel (left out for regression, which has none)
  val_*, test_ → held-out: markers (the evaluation points); everything else is a training curve
  <name>_ci95  → error bars (half-width of the 95% interval) on <name>
Other metrics (lr, tasks_per_s, ...) are not drawn: they are in MLflow's own charts.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path

HELD_OUT_PREFIXES = ("val_", "test_")
CI_SUFFIX = "_ci95"
PANEL_SIZE_IN = (5.5, 4.2)  # per panel, side by side: readable when embedded in the MLflow UI
DPI = 110
# A loss that spans more than this factor is drawn on a log axis (regression MSE falls by orders of magnitude).
LOG_SCALE_RATIO = 100.0
SPARSE_POINTS = 60  # training curves with at most this many points also get a dot per point


def _panel_of(name: str) -> str | None:
    if name.endswith(CI_SUFFIX):
        return None
    if "loss" in name:
        return "loss"
    if "accuracy" in name:
        return "accuracy"
    return None


def _colour_key(name: str) -> str:
    """What a series measures apart from where: 'val_loss_after' and 'accuracy_after' share 'after adaptation'."""
    return _label(name).split(", ", 1)[1]


def _label(name: str) -> str:
    """'val_accuracy_after' → 'held-out, after adaptation'."""
    where = "train"
    for prefix, words in (("val_", "held-out"), ("test_", "test")):
        if name.startswith(prefix):
            where, name = words, name[len(prefix):]
    for suffix, words in (("_after", "after adaptation"), ("_before", "before adaptation")):
        if name.endswith(suffix):
            return f"{where}, {words}"
    return f"{where}, {name.replace('_', ' ')}"


def _series(history: Iterable[Mapping]) -> dict[str, tuple[list[int], list[float], list[float] | None]]:
    """metric → (steps, values, ci95 half-widths or None), for the metrics that go into a panel."""
    points: dict[str, list[tuple[int, float, float]]] = {}
    for row in history:
        if "step" not in row:
            raise ValueError(f"history row without a 'step': {dict(row)!r}")
        step = int(row["step"])
        for name, value in row.items():
            if name == "step" or _panel_of(name) is None or not isinstance(value, numbers.Real):
                continue
            ci = row.get(name + CI_SUFFIX, math.nan)
            points.setdefault(name, []).append((step, float(value), float(ci) if isinstance(ci, numbers.Real) else math.nan))
    out = {}
    for name, rows in points.items():
        rows.sort(key=lambda r: r[0])
        cis = [r[2] for r in rows]
        out[name] = ([r[0] for r in rows], [r[1] for r in rows], cis if any(math.isfinite(c) for c in cis) else None)
    return out


def learning_curve_figure(history: Iterable[Mapping], *, title: str | None = None):
    """A matplotlib Figure: loss (and accuracy, when there is any) against the outer step."""
    from matplotlib.figure import Figure

    series = _series(history)
    if not series:
        raise ValueError("history holds no loss or accuracy values to plot")
    panels = [p for p in ("loss", "accuracy") if any(_panel_of(n) == p for n in series)]
    fig = Figure(figsize=(PANEL_SIZE_IN[0] * len(panels), PANEL_SIZE_IN[1]), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    # One colour per kind ("after adaptation", "before adaptation"), the same in both panels and for train and
    # held-out series; held-out series are dashed with markers.
    kinds = sorted({_colour_key(n) for n in series})
    colour = {kind: f"C{i % 10}" for i, kind in enumerate(kinds)}
    for ax, panel in zip(axes, panels):
        finite: list[float] = []
        for name in sorted(series, key=lambda n: (n.startswith(HELD_OUT_PREFIXES), n)):
            if _panel_of(name) != panel:
                continue
            steps, values, cis = series[name]
            finite += [v for v in values if math.isfinite(v)]
            if name.startswith(HELD_OUT_PREFIXES):
                ax.errorbar(steps, values, yerr=cis, fmt="o--", markersize=5, capsize=3, linewidth=1,
                            color=colour[_colour_key(name)], label=_label(name))
            else:
                # Markers while points are few, so a value isolated between NaNs still shows.
                ax.plot(steps, values, linewidth=1.5, marker="." if len(steps) <= SPARSE_POINTS else None,
                        color=colour[_colour_key(name)], label=_label(name))
        ax.set_xlabel("outer step")
        if panel == "accuracy":
            ax.set_ylabel("accuracy (query set)")
            if finite and 0.0 <= min(finite) and max(finite) <= 1.0:
                ax.set_ylim(0.0, 1.02)
        else:
            ax.set_ylabel("loss (query set)")
            positive = [v for v in finite if v > 0]
            if positive and len(positive) == len(finite) and max(positive) / min(positive) > LOG_SCALE_RATIO:
                ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        ax.set_title(panel)
    if title:
        fig.suptitle(title)
    return fig


def save_learning_curve(history: Iterable[Mapping], path: str | Path, *, title: str | None = None) -> Path:
    """Draw the learning curve into a PNG file at `path` (a local path); returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = learning_curve_figure(history, title=title)
    fig.savefig(path, format="png")
    return path
