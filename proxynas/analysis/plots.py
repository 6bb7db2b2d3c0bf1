"""The report's figures: each method's top set against whole-dataset training, and the correlations.

They use matplotlib's object API, not pyplot: no backend is switched and no global
state is touched; matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd

from proxynas.analysis.rankings import WHOLE, column_prefix
from proxynas.nas.kinds import ACCURACY, Measure
from proxynas.nas.results import top_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_correlations", "plot_top"]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # imported late: only writing plots needs matplotlib

    return Figure(figsize=(width, height), layout="constrained")


def plot_top(
    ranking: pd.DataFrame,
    summary: pd.DataFrame,
    tops: Mapping[str, Sequence[str]],
    measures: Mapping[str, Measure],
    top: float | int = 0.05,
    dataset: str | None = None,
) -> Figure:
    """Figure F8: per method, its values (x) against the whole dataset's validation accuracy (y) over its
    top set; the panels share the y axis, and the x axis where x is an accuracy too (then y = x is drawn).
    The configuration the method selects is a star, labelled with its id.

    ``ranking``, ``summary``, ``tops`` and ``measures`` as the report holds them; ``top``
    and ``dataset`` as it was asked, for the title.
    """
    rows = {r.method: r for r in summary.itertuples()}
    cols = max(1, min(3, len(rows)))
    nrows = max(1, math.ceil(len(rows) / cols))
    fig = _figure(4 * cols, 3.6 * nrows + 0.4)
    axes = fig.subplots(nrows, cols, squeeze=False, sharey=True).ravel()
    fig.suptitle(f"Each proxy's {top_label(top)} against whole-dataset training" + (f" ({dataset})" if dataset else ""))
    y = f"{WHOLE}_val_acc"
    accuracy_axes: list[Axes] = []
    for ax, (method, row) in zip(axes, rows.items(), strict=False):  # more axes than methods: the rest hidden
        measure = measures[method]
        x = f"{column_prefix(method)}_{measure.column}"
        points = ranking[ranking.config_id.isin(tops[method]) & ranking[y].notna()]
        ax.scatter(points[x], points[y], s=18, label="top-set configuration")
        chosen = points[points.config_id == row.selected]
        if not chosen.empty:
            ax.scatter(chosen[x], chosen[y], s=120, marker="*", color="tab:red", zorder=3, label="selected")
            ax.annotate(
                row.selected,
                (chosen[x].iloc[0], chosen[y].iloc[0]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color="tab:red",
            )
        if measure == ACCURACY:
            if accuracy_axes:
                ax.sharex(accuracy_axes[0])
            accuracy_axes.append(ax)
        else:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))  # synflow scores run to 1e20 and more
        rho = "undefined" if math.isnan(row.spearman_top) else f"{row.spearman_top:.2f}"
        ax.set_title(f"{method}: Spearman {rho} (n={row.n_top})", fontsize=10)
        ax.set_xlabel(f"{method} {measure.words}")
        ax.set_ylabel("whole-dataset validation accuracy")
    if accuracy_axes:  # y = x over the shared range: above it, whole-dataset training does better
        ax0 = accuracy_axes[0]
        lo = min(ax0.get_xlim()[0], ax0.get_ylim()[0])
        hi = max(ax0.get_xlim()[1], ax0.get_ylim()[1])
        for ax in accuracy_axes:
            ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=0.8, label="y = x")
        ax0.set_xlim(lo, hi)
        ax0.set_ylim(lo, hi)
        ax0.legend(fontsize=7, loc="lower right")
    for ax in axes[len(rows) :]:
        ax.set_visible(False)
    return fig


# the bars of the correlations plot: (summary column, legend label)
_BARS = (
    ("spearman_top", "Spearman, its top set"),
    ("spearman_all", "Spearman, all shared"),
    ("kendall_all", "Kendall's tau, all shared"),
)


def plot_correlations(summary: pd.DataFrame) -> Figure:
    """Spearman over each method's top set, and Spearman and Kendall over all shared configurations,
    side by side, each bar labelled with its value ("n/a" where it is undefined)."""
    fig = _figure(max(7.0, 1.6 * len(summary)), 4.0)
    ax = fig.subplots()
    width = 0.8 / len(_BARS)
    for j, (column, label) in enumerate(_BARS):
        at = [i + (j - (len(_BARS) - 1) / 2) * width for i in range(len(summary))]
        bars = ax.bar(at, summary[column].fillna(0.0), width=width, label=label)
        ax.bar_label(
            bars, labels=["n/a" if math.isnan(v) else f"{v:.2f}" for v in summary[column]], fontsize=7, padding=2
        )
    ax.set_xticks(list(range(len(summary))), summary.method, rotation=20, ha="right")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylim(-1.15, 1.15)
    ax.set_ylabel("rank correlation with the whole dataset")
    ax.set_title("Rank correlation with whole-dataset training (validation accuracy)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    return fig
