"""The report's figures as PNG bytes in base64 (embedded in the page, so it needs no other file or network).

matplotlib is imported here only, lazily, and drawn through its object API (Figure + the Agg canvas): no pyplot,
so no global figure state and no GUI backend chosen behind a notebook's back.
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Any, Sequence

SIZE = (4.6, 2.9)  # inches; at DPI, 460 × 290 pixels: three to a row on a laptop screen
DPI = 100


@dataclass(frozen=True)
class Series:
    """One line of a plot: a run's (or a run's decoding's) values over steps."""

    label: str
    color: int  # the run's index: the same color for a run in every plot
    steps: Sequence[float]
    values: Sequence[float]
    dashed: bool = False  # a second series of the same run (sampled vs greedy evaluation)


def _figure() -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def to_base64_png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def line_plot(title: str, series: Sequence[Series], legend: bool = False) -> str:
    """`title` over steps, one line per series (markers where a series has few points, gaps at NaN); a legend when
    asked (several runs in the report) or needed (several series)."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure()
    ax = fig.add_subplot()
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))  # steps are whole numbers
    for s in series:
        few = len(s.values) <= 12
        ax.plot(list(s.steps), [v if math.isfinite(v) else math.nan for v in s.values], label=s.label,
                color=f"C{s.color % 10}", linestyle="--" if s.dashed else "-", marker="o" if few else None,
                markersize=3, linewidth=1.4)
    ax.set_title(title, fontsize=10, y=1.0)  # a fixed place: placing it by the ticks costs a quarter of the time
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    if legend or len(series) > 1:
        ax.legend(fontsize=7, frameon=False)
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.16, top=0.9)  # fixed margins: tight_layout doubles the time
    return to_base64_png(fig)


def confusion_plot(title: str, matrix: Sequence[Sequence[int]], names: Sequence[str]) -> str:
    """A confusion matrix (rows: gold label, columns: predicted), each cell with its count."""
    n = len(matrix)
    names = list(names) if len(names) == n else [str(i) for i in range(n)]
    fig = _figure()
    fig.set_size_inches(max(3.2, 1.0 + 0.55 * n), max(2.9, 0.8 + 0.5 * n))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    top = max((max(r) for r in matrix if r), default=0)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > top / 2 else "black")
    ax.set_xticks(range(n))
    ax.set_xticklabels(names, fontsize=7, rotation=45 if n > 4 else 0)
    ax.set_yticks(range(n))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("gold", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return to_base64_png(fig)
