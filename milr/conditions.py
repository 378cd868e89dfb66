"""The paper's two conditions and its late-training claim, as grids and as numbers.

The paper (Iyer, Hanin & Rolnick 2023, Sec. 4) says the power law eta* ~ c (d w)^-alpha
holds when (i) the width is large compared to the depth and (ii) the input layer trains at a
relatively small learning rate, and (Sec. 1, 6) that eta* behaves differently from the
maximal learning rate later in training. This module holds what the figure notebooks of
those statements share:

* **grids** (:func:`figure_tasks`): the sweep tasks of each figure, built from the preset's
  entries ``width_vs_depth``, ``input_lr``, ``threshold_budget``, ``late_lr`` and
  ``choices`` (see :mod:`milr.presets`) on top of the preset's trial and search rules, so
  identical configurations share their cached record with the main figure;
* **fits per setting** (:func:`fit_table`) and **residuals from a reference fit**
  (:func:`reference_fit`, :func:`add_residuals`);
* **where the law breaks** (:func:`law_breakdown`, :func:`breakdown_by_seed`): the smallest
  depth-to-width ratio from which on the law fails;
* **the input layer's share of the NTK** (:func:`input_term_share`, :func:`ntk_alpha`), from
  the closed-form infinite-width NTK diagonal of :mod:`milr.theory`;
* :func:`run_condition_sweeps`, the part of ``make data`` that computes them.

Every threshold and rule here is our choice, stated in its docstring and in the notebooks.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .config import SearchConfig, TrialConfig, check_float, check_int, field_names
from .data import DEFAULT_THRESHOLDS, SPLIT_SIZES
from .fit import PowerLawFit, fit_power_law
from .late import late_lr_tasks
from .presets import get_preset
from .store import Store
from .sweep import eta_star_tasks, load_results, run_sweep, unique_tasks
from .theory import ntk_diagonal

__all__ = ["FIGURES", "figure_settings", "figure_tasks", "fit_table", "reference_fit",
           "add_residuals", "config_table", "law_breakdown", "breakdown_by_seed", "Breakdown",
           "input_term_share", "ntk_alpha", "eta_star_reference", "late_tasks",
           "run_condition_sweeps", "DEFAULT_TOLERANCE", "DEPTH_MARKERS", "depth_marker",
           "setting_colors", "fmt_ratio", "forest_panel", "search_best_accuracy",
           "choice_section", "choice_value_text", "choice_part_label", "choice_default"]

#: The figures of this module, in the order ``make data`` computes them.
FIGURES = ("width_vs_depth", "input_lr", "threshold_budget", "late_lr", "choices")

#: A point leaves the law when its eta* is more than this factor away from the reference fit
#: (our choice: a factor 2 is several times the seeds' spread of about 10-30 %).
DEFAULT_TOLERANCE = 2.0


# ---------------------------------------------------------------------------------- grids

def figure_settings(preset: dict, figure: str) -> dict:
    """The preset's entry for ``figure`` (one of :data:`FIGURES`), completed with the preset's
    data sets, trial and search rules. ``ValueError`` if the preset has no such entry."""
    if figure not in FIGURES:
        raise ValueError(f"figure={figure!r} must be one of {FIGURES}")
    if figure not in preset:
        raise ValueError(f"the preset has no {figure!r} entry (see milr.presets)")
    s = dict(preset[figure])
    s.setdefault("datasets", list(preset["datasets"]))
    s["trial"] = {**preset["trial"], **s.get("trial", {})}
    s["search"] = {**preset["search"], **s.get("search", {})}
    return s


def _eta_tasks(datasets, depths, widths, seeds, trial, search, min_width_over_depth=1.0):
    return eta_star_tasks(datasets, depths, widths, seeds, trial, search,
                          min_width_over_depth=min_width_over_depth)


def figure_tasks(preset: dict, figure: str, datasets: Sequence[str] | None = None) -> dict:
    """The eta* tasks of one figure, by part, as ``{part: [EtaStarTask, ...]}``.

    * ``width_vs_depth``: ``reference`` (the preset's main grid, w >= d) and ``narrow`` (the
      entry's depths x widths, every ratio kept);
    * ``input_lr``: one part per ``input_lr_scale`` value (``"s=0.01"``, ...);
    * ``threshold_budget``: ``"t=<value>"`` per threshold (per data set) and
      ``"budget=<steps>"`` per step budget;
    * ``late_lr``: ``reference``, the eta* of the late grid (the warm-up rates come from it;
      the late tasks themselves need those results: :func:`late_tasks`).
    * ``choices``: ``default`` (the preset's rules on the entry's reduced grid: the main
      figure's records) and one part ``"<field>=<value>"`` per alternative of each choice in
      the entry's ``alternatives`` (one field of the trial or search rules changed; a value
      equal to a data set's default or above its validation split, for ``n_val``, is left out
      there).

    ``datasets`` restricts the data sets (default: the entry's, else the preset's).
    """
    s = figure_settings(preset, figure)
    ds = list(datasets) if datasets is not None else list(s["datasets"])
    trial, search = s["trial"], s["search"]
    out: dict[str, list] = {}
    if figure == "width_vs_depth":
        out["reference"] = _eta_tasks(ds, preset["depths"], preset["widths"], preset["seeds"],
                                      trial, search, preset.get("min_width_over_depth", 1.0))
        out["narrow"] = _eta_tasks(ds, s["depths"], s["widths"], s["seeds"], trial, search,
                                   min_width_over_depth=0.0)
    elif figure == "input_lr":
        for scale in s["input_lr_scales"]:
            out[f"s={scale:g}"] = _eta_tasks(ds, s["depths"], s["widths"], s["seeds"],
                                             {**trial, "input_lr_scale": scale}, search)
    elif figure == "threshold_budget":
        for d in ds:  # a data set without its own list: its default threshold only
            for t in s["thresholds"].get(d, [DEFAULT_THRESHOLDS[d]]):
                out.setdefault(f"t={t:g}", []).extend(_eta_tasks(
                    [d], s["depths"], s["widths"], s["seeds"], {**trial, "threshold": t},
                    search))
        for b in s["step_budgets"]:
            out[f"budget={b}"] = _eta_tasks(ds, s["depths"], s["widths"], s["seeds"],
                                            {**trial, "step_budget": b}, search)
    elif figure == "choices":
        out["default"] = _eta_tasks(ds, s["depths"], s["widths"], s["seeds"], trial, search)
        for name, values in s["alternatives"].items():
            section = choice_section(name)
            for v in values:
                label = choice_part_label(name, v)
                for d in ds:
                    if name == "n_val" and v is not None and v > SPLIT_SIZES[d][1]:
                        continue  # more rows than the split has: not this data set's choice
                    t2, s2 = dict(trial), dict(search)
                    (t2 if section == "trial" else s2)[name] = v
                    tasks = _eta_tasks([d], s["depths"], s["widths"], s["seeds"], t2, s2)
                    if not tasks:
                        continue
                    t0 = tasks[0]
                    dflt = _eta_tasks([d], [t0.trial.depth], [t0.trial.width], [t0.seed],
                                      trial, search)[0]
                    if t0.record_config() == dflt.record_config():
                        continue  # the default itself on this data set (e.g. n_val=None)
                    out.setdefault(label, []).extend(tasks)
    else:  # late_lr
        out["reference"] = _eta_tasks(ds, s["depths"], s["widths"], s["reference_seeds"],
                                      trial, search)
    return out


def choice_section(name: str) -> str:
    """``"trial"`` or ``"search"``: which configuration holds the choice ``name`` (a field of
    :class:`milr.config.TrialConfig` or :class:`milr.config.SearchConfig`); ``ValueError``
    for any other name (the grid axes dataset, depth, width are not choices)."""
    if name in ("dataset", "depth", "width"):
        raise ValueError(f"choice {name!r} is a grid axis, not a choice")
    if name in field_names(TrialConfig):
        return "trial"
    if name in field_names(SearchConfig):
        return "search"
    allowed = [f for f in field_names(TrialConfig) + field_names(SearchConfig)
               if f not in ("dataset", "depth", "width")]
    raise ValueError(f"choice {name!r} is not a field of TrialConfig or SearchConfig; "
                     f"allowed: {', '.join(allowed)}")


def choice_value_text(value) -> str:
    """A choice's value as it appears in part labels and tables: numbers as ``%g``, ``None``
    as ``none``, strings as they are."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"{value:g}"
    return str(value)


def choice_part_label(name: str, value) -> str:
    """The part label of one alternative of the ``choices`` grid, ``"<field>=<value>"``
    (e.g. ``"batch_size=128"``); the defaults' part is ``"default"``."""
    return f"{name}={choice_value_text(value)}"


def choice_default(preset: dict, name: str):
    """The preset's value of choice ``name``: its trial or search rules, else the
    configuration class's default (``TrialConfig``/``SearchConfig``)."""
    section = choice_section(name)
    given = preset[section]
    if name in given:
        return given[name]
    cls = TrialConfig if section == "trial" else SearchConfig
    return {f.name: f.default for f in fields(cls)}[name]


def eta_star_reference(df: pd.DataFrame) -> dict:
    """``{(dataset, depth, width): median eta* over seeds}`` from an eta* results table
    (NaN when no seed reached the threshold)."""
    out = {}
    for (ds, d, w), g in df.groupby(["dataset", "depth", "width"]):
        v = pd.to_numeric(g["eta_star"], errors="coerce").to_numpy(dtype=float)
        v = v[np.isfinite(v) & (v > 0)]
        out[(ds, int(d), int(w))] = float(np.median(v)) if len(v) else math.nan
    return out


def late_tasks(preset: dict, reference: pd.DataFrame,
               datasets: Sequence[str] | None = None) -> list:
    """The late-stage tasks (:class:`milr.late.LateLRTask`) of the preset's ``late_lr`` entry,
    with warm-up rates ``warmup_fraction x`` the median eta* of ``reference`` (the results of
    ``figure_tasks(preset, "late_lr")["reference"]``). Configurations without an eta* are
    left out."""
    s = figure_settings(preset, "late_lr")
    ds = list(datasets) if datasets is not None else list(s["datasets"])
    t = s["trial"]
    opts = {k: t[k] for k in ("batch_size", "n_val", "input_lr_scale", "blowup_factor",
                              "dtype", "eval_every", "readout_gain", "bias") if k in t}
    opts.update(s.get("late", {}))
    search = {k: v for k, v in s["search"].items() if k != "k"}
    return late_lr_tasks(ds, s["depths"], s["widths"], s["seeds"],
                         eta_star_reference(reference), s.get("warmup_fraction", 0.1),
                         search=search, **opts)


# ---------------------------------------------------------------------------------- fits

def fit_table(df: pd.DataFrame, by: str | Sequence[str], x: str = "dw", y: str = "eta_star",
              n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One power-law fit ``y ~ c x^-alpha`` (:func:`milr.fit.fit_power_law`) per group of
    ``df`` grouped by ``by``; columns ``alpha``, ``alpha_lo``, ``alpha_hi`` (95 % bootstrap
    interval), ``c``, ``r2``, ``n_used``, ``n_dropped`` (points without a finite, positive
    y: searches that never reached the threshold) and ``n_configs``.
    ``ValueError`` if a column is missing."""
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in by + [x, y] if c not in df.columns]
    if missing:
        raise ValueError(f"df has no column(s) {missing}")
    rows = []
    for key, g in df.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            f = fit_power_law(pd.to_numeric(g[x], errors="coerce"),
                              pd.to_numeric(g[y], errors="coerce"), n_boot=n_boot, seed=seed)
        row = dict(zip(by, key))
        row.update(alpha=f.alpha, alpha_lo=f.alpha_lo, alpha_hi=f.alpha_hi,
                   c=f.c if math.isfinite(f.log_c) else math.nan, r2=f.r2, n_used=f.n_used,
                   n_dropped=f.n_dropped,
                   n_configs=int(g.groupby(["depth", "width"]).ngroups)
                   if {"depth", "width"} <= set(g.columns) else len(g))
        rows.append(row)
    return pd.DataFrame(rows)


def reference_fit(df: pd.DataFrame, min_width_over_depth: float = 16.0, x: str = "dw",
                  y: str = "eta_star", n_boot: int = 1000, seed: int = 0) -> PowerLawFit:
    """The power law fitted on the networks with ``width >= min_width_over_depth x depth``
    only (the paper's regime "w large compared to d"; our default w/d >= 16). Non-finite
    y (threshold never reached) are dropped and counted. ``ValueError`` for a bad ratio."""
    r = check_float("min_width_over_depth", min_width_over_depth, 0.0)
    sel = df[df["width"] >= r * df["depth"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fit_power_law(pd.to_numeric(sel[x], errors="coerce"),
                             pd.to_numeric(sel[y], errors="coerce"), n_boot=n_boot, seed=seed)


def add_residuals(df: pd.DataFrame, fit: PowerLawFit, x: str = "dw",
                  y: str = "eta_star") -> pd.DataFrame:
    """A copy of ``df`` with ``d_over_w`` (depth / width), ``y_fit`` (the fit's prediction)
    and ``log_resid = ln(y / y_fit)`` (NaN where y is not finite and positive) and
    ``reached`` (y finite and positive)."""
    out = df.copy()
    out["d_over_w"] = out["depth"] / out["width"]
    yy = pd.to_numeric(out[y], errors="coerce").to_numpy(dtype=float)
    out["y_fit"] = fit.predict(out[x].to_numpy(dtype=float))
    ok = np.isfinite(yy) & (yy > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["log_resid"] = np.where(ok, np.log(np.where(ok, yy, 1.0) / out["y_fit"]), np.nan)
    out["reached"] = ok
    return out


def config_table(df: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """Per (dataset, depth, width) from :func:`add_residuals` output: ``d_over_w``,
    ``n_seeds``, ``n_reached``, the median / min / max of ``log_resid`` over the seeds that
    reached the threshold, and ``fails``: most seeds never reached the threshold, or the
    median residual is more than a factor ``tolerance`` (> 1) away from the fit."""
    tol = math.log(check_float("tolerance", tolerance, 1.0, lo_open=True))
    rows = []
    for (ds, d, w), g in df.groupby(["dataset", "depth", "width"]):
        r = g["log_resid"].to_numpy(dtype=float)
        r = r[np.isfinite(r)]
        n, k = len(g), int(g["reached"].sum())
        med = float(np.median(r)) if len(r) else math.nan
        fails = (k < n / 2) or (math.isfinite(med) and abs(med) > tol) or not len(r)
        rows.append(dict(dataset=ds, depth=int(d), width=int(w), d_over_w=d / w, n_seeds=n,
                         n_reached=k, resid_median=med,
                         resid_min=float(r.min()) if len(r) else math.nan,
                         resid_max=float(r.max()) if len(r) else math.nan, fails=bool(fails)))
    return pd.DataFrame(rows)


@dataclass
class Breakdown:
    """Where the law fails along depth / width.

    ratio: the smallest tested d/w from which on (at it and at every larger tested d/w) at
        least half of the configurations fail; ``inf`` when the largest tested d/w still
        mostly passes (the law held over the whole grid), NaN with no data.
    last_ok: the largest tested d/w below ``ratio`` (the law's breakdown lies in
        ``(last_ok, ratio]``); NaN when none.
    first_failure: the smallest d/w with any failing configuration (NaN if none).
    per_ratio: ``[(d_over_w, n_configs, n_failing), ...]`` ascending.
    """
    ratio: float
    last_ok: float
    first_failure: float
    per_ratio: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def law_breakdown(d_over_w: Iterable[float], fails: Iterable[bool]) -> Breakdown:
    """The depth-to-width ratio at which the law fails (see :class:`Breakdown`).

    ``d_over_w`` and ``fails`` are per configuration (equal lengths; ``ValueError``
    otherwise or for a non-positive ratio). Ratios are grouped exactly (a grid of powers of
    two gives exact fractions). Source: our definition (the paper states the condition
    without a number).
    """
    r = np.asarray(list(d_over_w), dtype=float)
    f = np.asarray(list(fails), dtype=bool)
    if r.shape != f.shape:
        raise ValueError(f"d_over_w and fails must have equal lengths, got {r.size} and "
                         f"{f.size}")
    if len(r) and not (np.isfinite(r).all() and (r > 0).all()):
        raise ValueError("d_over_w must be finite and > 0")
    if not len(r):
        return Breakdown(math.nan, math.nan, math.nan, [])
    vals = np.unique(r)
    per = [(float(v), int((r == v).sum()), int(f[r == v].sum())) for v in vals]
    mostly = [nf >= n / 2 for _, n, nf in per]
    i = len(per)
    while i > 0 and mostly[i - 1]:
        i -= 1
    ratio = per[i][0] if i < len(per) else math.inf
    last_ok = per[i - 1][0] if i > 0 else math.nan
    any_fail = [v for v, _, nf in per if nf > 0]
    return Breakdown(ratio, last_ok, any_fail[0] if any_fail else math.nan, per)


def breakdown_by_seed(df: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE) -> pd.DataFrame:
    """:func:`law_breakdown` of each (dataset, seed) alone, from :func:`add_residuals`
    output: a configuration fails for a seed when that seed never reached the threshold or
    its eta* is more than a factor ``tolerance`` off the fit. Columns ``dataset``, ``seed``,
    ``ratio``, ``last_ok``, ``first_failure`` (the spread over seeds of the breakdown)."""
    tol = math.log(check_float("tolerance", tolerance, 1.0, lo_open=True))
    rows = []
    for (ds, s), g in df.groupby(["dataset", "seed"]):
        fails = ~g["reached"].to_numpy(bool) | (np.abs(g["log_resid"].to_numpy(float)) > tol)
        b = law_breakdown(g["d_over_w"], fails)
        rows.append(dict(dataset=ds, seed=int(s), ratio=b.ratio, last_ok=b.last_ok,
                         first_failure=b.first_failure))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- theory

def input_term_share(sq_norm, n0: int, depth: int, width: int,
                     input_lr_scale: float) -> float:
    """Share of the input layer's weights and bias in the infinite-width NTK diagonal,
    averaged over inputs: ``mean(Theta_s(x,x) - Theta_0(x,x)) / mean(Theta_s(x,x))`` with
    ``Theta_s`` the closed form of :func:`milr.theory.ntk_diagonal` at input-layer multiplier
    s (0 freezes the input layer). ``sq_norm``: array of ``||x||^2`` of the data. Returns a
    number in [0, 1). Source: our derivation (milr.theory)."""
    q = np.asarray(sq_norm, dtype=float)
    full = ntk_diagonal(q, n0, depth, width, input_lr_scale=input_lr_scale).mean()
    frozen = ntk_diagonal(q, n0, depth, width, input_lr_scale=0.0).mean()
    return float((full - frozen) / full)


def ntk_alpha(sq_norm, n0: int, depths: Sequence[int], widths: Sequence[int],
              input_lr_scale: float) -> float:
    """The exponent alpha that a rate proportional to ``1 / mean Theta(x, x)`` (the NTK
    diagonal, :func:`milr.theory.ntk_diagonal`) would show on the grid depths x widths:
    the slope of ``-log(1/Theta)`` on ``log(d w)`` by least squares. With the input layer
    frozen or slow, Theta ~ d w and alpha -> 1; a large input term (constant in d w) flattens
    it. Source: our derivation; it predicts the *direction* of the change with the input
    layer's rate, not eta* itself."""
    q = np.asarray(sq_norm, dtype=float)
    xs, ys = [], []
    for d in depths:
        for w in widths:
            xs.append(math.log(check_int("depth", d) * check_int("width", w)))
            ys.append(-math.log(float(ntk_diagonal(q, n0, d, w,
                                                   input_lr_scale=input_lr_scale).mean())))
    slope = np.polyfit(xs, ys, 1)[0]
    return float(-slope)


# ---------------------------------------------------------------------------------- make data

def run_condition_sweeps(preset_name: str, store=None, recompute: bool = False,
                         device: str = "cpu", progress: bool = True,
                         datasets: Sequence[str] | None = None,
                         figures: Sequence[str] | None = None, **run_kwargs) -> dict:
    """Compute the records of the condition figures of preset ``preset_name`` (the part of
    ``make data`` after the main eta* and lambda_1 sweeps): the eta* tasks of
    :func:`figure_tasks` for each figure in ``figures`` (default: the preset's
    ``data_figures``) and then the late-stage tasks (whose warm-up rates need the eta* of the
    late grid). Records already in ``store`` are not recomputed; ``datasets`` restricts the
    data sets. Returns ``{figure: (n_records, n_tasks, seconds)}``."""
    import time

    P = get_preset(preset_name)
    figures = P.get("data_figures", []) if figures is None else list(figures)
    bad = [f for f in figures if f not in FIGURES]
    if bad:
        raise ValueError(f"figures={bad} are not known; allowed: {FIGURES}")
    out = {}
    for fig in figures:
        if fig not in P:
            continue
        t0 = time.perf_counter()
        parts = figure_tasks(P, fig, datasets)
        tasks = [t for ts in parts.values() for t in ts]
        df = run_sweep(tasks, store, recompute=recompute, device=device, progress=progress,
                       **run_kwargs)
        n_done, n_all = len(df), len(df) + _n_missing(tasks, df)
        if fig == "late_lr":
            ref = load_results(parts["reference"], store)
            late = late_tasks(P, ref, datasets)
            dl = run_sweep(late, store, recompute=recompute, device=device, progress=progress,
                           **run_kwargs)
            n_done, n_all = n_done + len(dl), n_all + len(late)
        out[fig] = (n_done, n_all, time.perf_counter() - t0)
    return out


def _n_missing(tasks, df) -> int:
    return len(unique_tasks(tasks)) - len(df)


# ---------------------------------------------------------------------------------- figures
# Figure helpers of the condition notebooks; the project's style, depth colours and
# savefig live in milr.plotting (one place), these only add what these figures need.

#: Marker per depth, where colour already encodes another variable (input-layer factor,
#: threshold, budget): same depth -> same marker in every condition figure.
DEPTH_MARKERS = {1: "o", 2: "s", 4: "^", 8: "D", 16: "v", 32: "P", 64: "X"}


def depth_marker(depth: int) -> str:
    """The marker of ``depth`` in the condition figures (``"o"`` for depths not listed)."""
    return DEPTH_MARKERS.get(int(depth), "o")


def setting_colors(values: Sequence, cmap: str = "viridis") -> dict:
    """One colour per setting value (sorted ascending), evenly spaced on ``cmap`` and
    avoiding its brightest end (readable on white). Returns ``{value: hex}``."""
    import matplotlib
    from matplotlib.colors import to_hex

    vals = sorted(set(values))
    cm = matplotlib.colormaps[cmap]
    n = max(len(vals) - 1, 1)
    return {v: to_hex(cm(0.85 * i / n)) for i, v in enumerate(vals)}


def fmt_ratio(r: float) -> str:
    """A depth/width ratio as text: ``1/16`` for reciprocals of integers, ``2`` or ``0.3``
    otherwise; ``inf`` and NaN as ``∞`` and ``n/a``."""
    if r is None or (isinstance(r, float) and math.isnan(r)):
        return "n/a"
    if math.isinf(r):
        return "∞"
    if r < 1 and abs(1 / r - round(1 / r)) < 1e-9:
        return f"1/{round(1 / r)}"
    return f"{r:g}"


def forest_panel(ax, table: pd.DataFrame, labels: Sequence[str], colors: Sequence[str] | None
                 = None, theory: Sequence[float] | None = None, mark: Sequence[bool] | None
                 = None) -> None:
    """alpha with its 95 % interval per setting, one row each (top to bottom in the order
    given), R^2 and the number of points written at the right edge. ``table`` has ``alpha``,
    ``alpha_lo``, ``alpha_hi``, ``r2`` and ``n_used`` (rows aligned with ``labels``);
    ``theory`` optional predicted alphas
    (open diamonds); ``mark`` flags rows drawn bold (e.g. the default setting)."""
    n = len(labels)
    ys = np.arange(n)[::-1]
    colors = list(colors) if colors is not None else ["k"] * n
    for i, (y, (_, row)) in enumerate(zip(ys, table.iterrows())):
        a, lo, hi = row["alpha"], row["alpha_lo"], row["alpha_hi"]
        if np.isfinite(a):
            err = [[a - lo], [hi - a]] if np.isfinite(lo) and np.isfinite(hi) else None
            ax.errorbar([a], [y], xerr=err, fmt="o", color=colors[i], ms=5, capsize=3,
                        lw=1.2, label="measured α (95 % interval)" if i == 0 else None)
        r2, n_pts = row["r2"], row.get("n_used", math.nan)
        txt = f"R² = {r2:.2f}" if np.isfinite(r2) else "no fit"
        if np.isfinite(n_pts):
            txt += f"\nn = {int(n_pts)}"
        ax.text(1.02, y, txt, transform=ax.get_yaxis_transform(), va="center", fontsize=7)
        if theory is not None and np.isfinite(theory[i]):
            ax.plot([theory[i]], [y], "D", mfc="none", mec="0.3", ms=6,
                    label="NTK-diagonal prediction" if i == 0 else None)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels)
    if mark is not None:
        for tick, m in zip(ax.get_yticklabels(), mark):
            if m:
                tick.set_fontweight("bold")
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel("exponent α of η* ≈ c·(d·w)^-α")


def search_best_accuracy(tasks: Sequence, store=None) -> pd.DataFrame:
    """For eta* tasks: the best validation accuracy any trial of the search reached (from
    the trial logs in the records), one row per finished task with ``dataset``, ``depth``,
    ``width``, ``seed``, ``best_acc``. Shows how far a search that never reached the
    threshold got."""
    store = Store() if store is None else store
    rows = []
    for t in unique_tasks(tasks):  # a task listed twice is one record, one row
        rec = store.get(t.kind, t.record_config())
        if rec is None:
            continue
        accs = [tr.get("best_acc") for tr in rec["result"].get("trials", [])]
        accs = [a for a in accs if isinstance(a, (int, float)) and math.isfinite(a)]
        c = rec["config"]
        rows.append(dict(dataset=c["dataset"], depth=c["depth"], width=c["width"],
                         seed=c["seed"], best_acc=max(accs) if accs else math.nan))
    return pd.DataFrame(rows)
