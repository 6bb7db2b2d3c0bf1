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
from proxynas.analysis.statistics import DEFAULT_TOP
from proxynas.nas.kinds import ACCURACY, Measure
from proxynas.nas.results import top_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["padded", "plot_correlations", "plot_top"]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # imported late: only writing plots needs matplotlib

    return Figure(figsize=(width, height), layout="constrained")


def plot_top(
    ranking: pd.DataFrame,
    summary: pd.DataFrame,
    tops: Mapping[str, Sequence[str]],
    measures: Mapping[str, Measure],
    top: float | int = DEFAULT_TOP,
    dataset: str | None = None,
) -> Figure:
    """Figure F8: per method, its values (x) against the whole dataset's validation accuracy (y) over its
    top set; the panels share the y axis. The configuration the method selects is a star, labelled with its id.

    Each x axis and the y axis span their own values with padding (``padded``): a proxy a point wide is
    not squeezed into the corner of a range shared with the whole dataset's or another proxy's. Where x is
    an accuracy too, y = x is drawn over the part of the panel it crosses.

    ``ranking``, ``summary``, ``tops`` and ``measures`` as the report holds them; ``top``
    and ``dataset`` as it was asked, for the title.
    """
    rows = {r.method: r for r in summary.itertuples()}
    cols = max(1, min(3, len(rows)))
    nrows = max(1, math.ceil(len(rows) / cols))
    fig = _figure(4 * cols, 3.6 * nrows + 0.4)
    axes = fig.subplots(nrows, cols, squeeze=False, sharey=True).ravel()
    title = f"Each proxy's {top_label(top)} against whole-dataset training" + (f" ({dataset})" if dataset else "")
    fig.suptitle(title, wrap=True)  # wrapped: one panel is narrower than the title
    y = f"{WHOLE}_val_acc"
    panels = []  # (axes, top-set points, x column, measure) of each method
    for ax, (method, row) in zip(axes, rows.items(), strict=False):  # more axes than methods: the rest hidden
        measure = measures[method]
        x = f"{column_prefix(method)}_{measure.column}"
        points = ranking[ranking.config_id.isin(tops[method]) & ranking[y].notna()]
        panels.append((ax, points, x, measure))
        ax.scatter(points[x], points[y], s=18, label="top-set configuration")
        if points.empty:
            ax.text(
                0.5,
                0.5,
                "no configuration of its top set\nhas a whole-dataset result",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=8,
            )
        rho = "undefined" if math.isnan(row.spearman_top) else f"{row.spearman_top:.2f}"
        ax.set_title(f"{method}: Spearman {rho} (n={row.n_top})", fontsize=10)
        ax.set_xlabel(f"{method} {measure.words}")
        ax.set_ylabel("whole-dataset validation accuracy")
        if measure != ACCURACY:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))  # synflow scores run to 1e20 and more
    # limits set before the labels, which are placed by them, and without autoscaling, which y = x would widen
    if (ylim := padded(pd.concat([points[y] for _, points, _, _ in panels]))) is not None:
        axes[0].set_ylim(ylim)  # shared by every panel
    for (ax, points, x, measure), row in zip(panels, rows.values(), strict=True):
        if (xlim := padded(points[x])) is not None:
            ax.set_xlim(xlim)
        _label_selected(ax, points[points.config_id == row.selected], x, y, row.selected)
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        if measure == ACCURACY and max(x0, y0) < min(x1, y1):  # y = x crosses the panel: above it, whole-
            lo, hi = max(x0, y0), min(x1, y1)  # dataset training does better; elsewhere it is left out
            ax.plot([lo, hi], [lo, hi], linestyle="--", color="grey", linewidth=0.8, label="y = x")
    legend = {label: handle for ax, *_ in panels for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    axes[0].legend(legend.values(), legend.keys(), fontsize=7, loc="best")
    for ax in axes[len(rows) :]:
        ax.set_visible(False)
    return fig


def padded(values: pd.Series, fraction: float = 0.1) -> tuple[float, float] | None:
    """The range of ``values`` widened by ``fraction`` of it on each side (of the value itself where they are
    all one value, so that a single point sits in the middle); None where there is no finite value."""
    finite = values[values.abs() < math.inf]  # NaN compares False too
    if finite.empty:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    pad = fraction * ((hi - lo) or abs(lo) or 1.0)
    return lo - pad, hi + pad


def _label_selected(ax: Axes, chosen: pd.DataFrame, x: str, y: str, config_id: str) -> None:
    """A red star at the selected configuration, its id written towards the middle of the panel, so that a
    point at an edge keeps its label inside the axes, clear of the title."""
    if chosen.empty:
        return
    at = (float(chosen[x].iloc[0]), float(chosen[y].iloc[0]))
    ax.scatter(*at, s=120, marker="*", color="tab:red", zorder=3, label="selected")
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    right, upper = at[0] > (x0 + x1) / 2, at[1] > (y0 + y1) / 2
    ax.annotate(
        config_id,
        at,
        textcoords="offset points",
        xytext=(-6 if right else 6, -6 if upper else 6),
        ha="right" if right else "left",
        va="top" if upper else "bottom",
        fontsize=7,
        color="tab:red",
    )


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
