"""Shared figure style: one place for colours, fonts and deterministic figure files."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["use_style", "depth_color", "DEPTH_COLORS", "savefig", "panel_grid",
           "plot_power_law_panel", "plain_log_ticks", "legend_below", "FIGURES_DIR"]

FIGURES_DIR = Path(__file__).resolve().parent.parent / "figures"

#: Same depth -> same colour in every figure (Okabe-Ito colour-blind-safe palette, all of it
#: readable on white).
DEPTH_COLORS = {
    1: "#E69F00", 2: "#D55E00", 4: "#009E73", 8: "#0072B2", 16: "#CC79A7", 32: "#000000",
}
_EXTRA = ["#56B4E9", "#999999", "#F0E442"]

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,
    "svg.hashsalt": "milr",
}


def use_style() -> None:
    """Apply the project's matplotlib style (call once at the top of a notebook)."""
    matplotlib.rcParams.update(STYLE)


def depth_color(depth: int) -> str:
    """The colour of depth ``depth`` (consistent across every figure)."""
    if depth in DEPTH_COLORS:
        return DEPTH_COLORS[depth]
    return _EXTRA[int(math.log2(max(depth, 1))) % len(_EXTRA)]


def panel_grid(n: int, ncols: int = 3, panel: tuple[float, float] = (4.2, 3.9), **kwargs):
    """``(fig, axes)`` for ``n`` panels (one per data set, any number): rows of at most
    ``ncols`` panels of ``panel`` inches each, unused cells hidden; ``axes`` is the flat list
    of the ``n`` panels in reading order. ``kwargs`` go to :func:`matplotlib.pyplot.subplots`.
    Raises ``ValueError`` for ``n < 1``."""
    if n < 1:
        raise ValueError(f"n={n!r} panels: need at least 1")
    cols = min(n, ncols)
    rows = math.ceil(n / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(panel[0] * cols, panel[1] * rows),
                             squeeze=False, **kwargs)
    flat = list(grid.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def savefig(fig, name: str, directory: str | Path | None = None) -> list[Path]:
    """Save ``fig`` as ``<directory>/<name>.png`` and ``.pdf`` with deterministic metadata.

    No creation date and no software version are embedded, so an unchanged figure gives a
    byte-identical file (our choice; see showyourwork's cached rules). Returns the two paths.
    """
    directory = FIGURES_DIR if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, meta in (("png", {"Software": None}),
                      ("pdf", {"Creator": None, "Producer": None, "CreationDate": None})):
        p = directory / f"{name}.{ext}"
        fig.savefig(p, metadata=meta)
        paths.append(p)
    return paths


def plot_power_law_panel(ax, df, x: str, y: str, fit=None, hue: str = "depth",
                         xlabel: str | None = None, ylabel: str | None = None,
                         fit_label: str = "fit") -> None:
    """Log-log scatter of ``df[y]`` against ``df[x]``: one colour per depth, seeds as points
    with their median marked, and the fitted power law (a :class:`milr.fit.PowerLawFit`) as
    a dashed line, with alpha +/- interval and R^2 written in the lower-left corner (where
    falling data leave room). Non-positive or non-finite y are not drawn.
    """
    d = df[np.isfinite(df[y].astype(float)) & (df[y].astype(float) > 0)]
    for h, g in d.groupby(hue):
        c = depth_color(int(h))
        ax.scatter(g[x], g[y], s=10, alpha=0.45, color=c, linewidths=0)
        med = g.groupby(x)[y].median()
        ax.plot(med.index, med.values, "o-", ms=4, lw=1, color=c, label=f"{hue} {h}")
    if fit is not None and math.isfinite(fit.alpha):
        xs = np.geomspace(d[x].min(), d[x].max(), 50)
        ax.plot(xs, fit.predict(xs), "k--", lw=1.2, label=fit_label)
        ax.text(0.03, 0.03, f"{fit_label}:\n{fit.label()}", transform=ax.transAxes,
                fontsize=8, va="bottom", ha="left",
                bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.8", alpha=0.9))
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_ticks(ax)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)


def plain_log_ticks(ax) -> None:
    """Label log axes with plain numbers (0.2, 1, 30) instead of 2 x 10^-1."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    fmt = FuncFormatter(lambda v, _: f"{v:g}")

    def mantissa_in(keep):  # label a minor tick only if its leading digit is in ``keep``
        return FuncFormatter(lambda v, _: f"{v:g}" if v > 0 and round(
            v / 10 ** math.floor(math.log10(v) + 1e-9)) in keep else "")

    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            axis.set_major_formatter(fmt)
            lo, hi = sorted(ax.get_xlim() if axis is ax.xaxis else ax.get_ylim())
            span = hi / max(lo, 1e-300)
            if span < 12:  # about a decade: ticks at 2..9, labels at 2, 3, 5, 7
                axis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)))
                axis.set_minor_formatter(mantissa_in({2, 3, 5, 7}))
                continue
            axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            few_decades = span < 300  # label 2 and 5 when there is room
            axis.set_minor_formatter(mantissa_in({2, 5}) if few_decades and axis is ax.yaxis
                                     else FuncFormatter(lambda v, _: ""))


def legend_below(fig, ax, ncol: int | None = None) -> None:
    """One figure legend under the panels, from ``ax``'s labelled artists."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol or len(labels), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
