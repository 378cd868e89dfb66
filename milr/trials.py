"""The trials of one eta* search, as a table and as a picture (a layer above search and store).

An eta* search is a dozen short training runs ("trials"), one learning rate each. This module
turns the trial log of a search into something to read:

* :func:`trial_table`: one row per trial, in the order run: learning rate, round, outcome,
  the trial's own reason, stopping step, best and final validation accuracy;
* :func:`plot_trials`: learning rate (log axis) against best accuracy and stopping step, one
  marker per outcome, the final bracket shaded, eta* and (when lambda_1 is known) the
  gradient-descent stability limit 2 / lambda_1 marked;
* :func:`eta_star_record` / :func:`sharpness_record`: the cached records of one network of a
  preset, read through :class:`milr.store.Store` (``milr trials`` on the command line).

A search is given as an :class:`milr.search.EtaStarResult`, its ``to_dict()``, or a cached
record (the dict :meth:`milr.store.Store.get` returns, with ``config`` and ``result``).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .config import network_options
from .plotting import plain_log_ticks
from .presets import get_preset
from .search import EtaStarResult
from .sharpness import sharpness_tasks
from .store import Store
from .sweep import eta_star_tasks

__all__ = ["OUTCOMES", "OUTCOME_STYLE", "trial_outcome", "trial_table", "search_summary",
           "plot_trials", "eta_star_record", "sharpness_record", "preset_configs"]

#: The four outcomes of a trial, in the legend's order.
OUTCOMES = ("success", "diverged", "budget exhausted", "cancelled")
#: How each outcome is drawn (marker, colour; Okabe-Ito palette).
OUTCOME_STYLE = {
    "success": ("o", "#009E73"),
    "diverged": ("X", "#D55E00"),
    "budget exhausted": ("s", "#0072B2"),
    "cancelled": ("D", "#999999"),
}
_REASON_TO_OUTCOME = {
    "reached_threshold": "success",
    "diverged_nonfinite": "diverged",
    "diverged_blowup": "diverged",
    "budget_exhausted": "budget exhausted",
    "cancelled": "cancelled",
}
TABLE_COLUMNS = ["trial", "eta", "round", "outcome", "reason", "steps", "best_acc",
                 "final_acc"]


def trial_outcome(entry: dict) -> str:
    """The outcome of one trial-log entry: ``success``, ``diverged`` (non-finite loss or
    parameter, or the loss blow-up rule), ``budget exhausted`` (the step budget ran out below
    the threshold) or ``cancelled`` (the batched search stopped a trial whose outcome could no
    longer change the bracket; ``success`` is ``None`` then).

    An entry without a ``reason`` (a synthetic oracle's log) is a success or, failing, counts
    as ``budget exhausted``. Raises ``ValueError`` for an unknown reason.
    """
    reason = entry.get("reason")
    if reason is None:
        if entry.get("success") is None:
            return "cancelled"
        return "success" if entry["success"] else "budget exhausted"
    if reason not in _REASON_TO_OUTCOME:
        raise ValueError(f"trial reason={reason!r} is not known; allowed: "
                         f"{', '.join(_REASON_TO_OUTCOME)}")
    return _REASON_TO_OUTCOME[reason]


def _parts(result) -> tuple[dict, dict | None]:
    """``(result dict, configuration or None)`` of a search given in any accepted form."""
    if isinstance(result, EtaStarResult):
        return result.to_dict(), None
    if isinstance(result, dict):
        if "result" in result and isinstance(result["result"], dict):  # a store record
            return result["result"], result.get("config")
        if "trials" in result:
            return result, None
    raise TypeError("result must be an EtaStarResult, its to_dict(), or an eta* record from "
                    f"milr.store.Store.get (with 'config' and 'result'); got "
                    f"{type(result).__name__}")


def _float(x) -> float:
    return math.nan if x is None else float(x)


def trial_table(result) -> pd.DataFrame:
    """The trials of one search, one row per trial in the order they ran.

    Columns: ``trial`` (1, 2, ... in the order run), ``eta`` (the hidden-layer learning rate;
    the input layer ran at ``input_lr_scale`` x eta), ``round`` (the search round that
    proposed it: 1 = the scan, then one per bracket update; ``<NA>`` when the log does not say,
    e.g. the sequential search), ``outcome`` (:data:`OUTCOMES`), ``reason`` (the trial's own
    stopping reason), ``steps`` (the SGD step at which it stopped: success, divergence,
    cancellation or the budget), ``best_acc``, ``final_acc`` (validation accuracy; NaN when
    the trial stopped before its first evaluation).

    ``result``: an :class:`~milr.search.EtaStarResult`, its ``to_dict()``, or a cached record.
    """
    res, _ = _parts(result)
    rows = []
    for i, t in enumerate(res.get("trials") or [], start=1):
        rows.append({"trial": i, "eta": float(t["eta"]), "round": t.get("round"),
                     "outcome": trial_outcome(t), "reason": t.get("reason") or "",
                     "steps": t.get("steps"), "best_acc": _float(t.get("best_acc")),
                     "final_acc": _float(t.get("final_acc"))})
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    df["round"] = df["round"].astype("Int64")
    df["steps"] = df["steps"].astype("Int64")
    return df


def search_summary(result) -> dict:
    """The scalar results of a search (``eta_star``, ``bracket_lo``, ``bracket_hi``,
    ``status``, ``eta_min``, ``non_interval``, ``n_trials``, ...): no trial log."""
    res, _ = _parts(result)
    return {k: v for k, v in res.items() if not isinstance(v, (list, dict))}


def plot_trials(result, ax=None, sharpness: float | None = None,
                threshold: float | None = None, sharpness_label: str = "λ1"):
    """Draw the trials of one search against their learning rate (log axis).

    ``ax``: ``None`` (a new figure with two panels sharing the learning-rate axis: best
    validation accuracy on top, stopping step below), one Axes (best accuracy only, each
    marker labelled with its stopping step), or a pair of Axes (accuracy, steps).
    Markers: one shape and colour per outcome (:data:`OUTCOME_STYLE`); a trial that stopped
    before its first evaluation (no accuracy) is drawn hollow at accuracy 0. Shaded: the final
    bracket [bracket_lo, bracket_hi] (to the right edge when bracket_hi is infinite). Solid
    line: eta*. Dashed line: 2 / lambda_1 when ``sharpness`` (lambda_1, > 0) is given.
    ``threshold`` (the accuracy t; taken from the record's configuration when omitted) is a
    dotted line. ``sharpness_label`` names lambda_1 in the legend (e.g. "effective λ1").

    Returns the list of Axes drawn on. Raises ``ValueError`` for a non-positive sharpness.
    """
    import matplotlib.pyplot as plt

    res, cfg = _parts(result)
    if threshold is None and cfg is not None:
        threshold = cfg.get("threshold")
    if sharpness is not None and not (math.isfinite(float(sharpness)) and sharpness > 0):
        raise ValueError(f"sharpness={sharpness!r} must be a finite lambda_1 > 0")
    df = trial_table(result)
    if ax is None:
        fig, axes = plt.subplots(2, 1, figsize=(6.4, 4.6), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 2]})
        axes = list(axes)
    elif isinstance(ax, (list, tuple, np.ndarray)):
        axes = list(ax)
        if len(axes) != 2:
            raise ValueError(f"ax must be None, one Axes or two Axes; got {len(axes)} Axes")
    else:
        axes = [ax]
    acc_ax = axes[0]
    step_ax = axes[1] if len(axes) > 1 else None

    eta_star = _float(res.get("eta_star"))
    lo, hi = _float(res.get("bracket_lo")), _float(res.get("bracket_hi"))
    marks = list(df.eta.to_numpy(dtype=float)) + [v for v in (eta_star, lo, hi) if
                                                   math.isfinite(v)]
    if sharpness is not None:
        marks.append(2.0 / float(sharpness))
    x_lo = min(marks) / 1.6 if marks else 1e-3
    x_hi = max(marks) * 1.6 if marks else 10.0
    for a in axes:
        if math.isfinite(lo) and not math.isnan(hi):
            a.axvspan(lo, hi if math.isfinite(hi) else x_hi, color="#F0E442", alpha=0.35,
                      lw=0, zorder=0, label="final bracket" if a is acc_ax else None)
        if math.isfinite(eta_star):
            a.axvline(eta_star, color="k", lw=1.2, zorder=1,
                      label=f"η* = {eta_star:.3g}" if a is acc_ax else None)
        if sharpness is not None:
            a.axvline(2.0 / sharpness, color="k", ls="--", lw=1.0, zorder=1,
                      label=(f"2/{sharpness_label} = {2.0 / sharpness:.3g}" if a is acc_ax
                             else None))
    for outcome in OUTCOMES:
        g = df[df.outcome == outcome]
        if not len(g):
            continue
        marker, color = OUTCOME_STYLE[outcome]
        measured = np.isfinite(g.best_acc.to_numpy(dtype=float))
        label = f"{outcome} ({len(g)})"
        if measured.any():
            acc_ax.scatter(g.eta[measured], g.best_acc[measured], marker=marker, s=34,
                           color=color, zorder=3, label=label)
        if (~measured).any():
            acc_ax.scatter(g.eta[~measured], np.zeros((~measured).sum()), marker=marker,
                           s=34, facecolors="none", edgecolors=color, zorder=3,
                           label=None if measured.any() else label)
        if step_ax is not None:
            step_ax.scatter(g.eta, g.steps.astype(float), marker=marker, s=30, color=color,
                            zorder=3)
        else:
            for e, acc, st in zip(g.eta, g.best_acc, g.steps):
                y = acc if np.isfinite(acc) else 0.0
                acc_ax.annotate(f"{st}", (e, y), textcoords="offset points", xytext=(0, 6),
                                ha="center", fontsize=6, color="0.3")
    if threshold is not None:
        acc_ax.axhline(float(threshold), color="0.4", ls=":", lw=1,
                       label=f"threshold t = {float(threshold):g}")
    acc_ax.set_ylabel("best validation accuracy\n(hollow: none measured)")
    acc_ax.set_ylim(-0.04, 1.04)
    for a in axes:
        a.set_xscale("log")
        a.set_xlim(x_lo, x_hi)
    if step_ax is not None:
        step_ax.set_ylabel("stopping step")
        step_ax.set_ylim(bottom=0)
        step_ax.set_xlabel("learning rate η (log scale)")
    else:
        acc_ax.set_xlabel("learning rate η (log scale; numbers: stopping step)")
    for a in axes:
        plain_log_ticks(a)
    acc_ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=7)
    return axes


# -- the cached records of one network --------------------------------------------------------

def preset_configs(preset: str, dataset: str, depth: int, width: int, seed: int,
                   trial: dict | None = None) -> tuple[Any, Any]:
    """``(eta* task, sharpness task)`` of one network under ``preset``'s trial, search and
    sharpness settings (``trial`` overrides trial fields, e.g. ``{"input_lr_scale": 1.0}``).
    The sharpness task uses the trial's ``input_lr_scale`` for its effective lambda_1 and
    the trial's network (``readout_gain``, ``bias``)."""
    P = get_preset(preset)
    tr = {**P["trial"], **(trial or {})}
    (task,) = eta_star_tasks([dataset], [depth], [width], [seed], tr, P["search"],
                             min_width_over_depth=0)
    opts = {**P.get("sharpness", {}), "input_lr_scale": task.trial.input_lr_scale,
            **network_options(task.trial)}
    (stask,) = sharpness_tasks([dataset], [depth], [width], [seed], min_width_over_depth=0,
                               **opts)
    return task, stask


def eta_star_record(store: Store | None, dataset: str, depth: int, width: int, seed: int,
                    preset: str = "quick", trial: dict | None = None) -> dict | None:
    """The cached eta* record (``config``, ``result`` with its trial log, ``meta``) of one
    network under ``preset``'s rules, or ``None`` when it is not in ``store`` (default: the
    repository's ``data/results``)."""
    task, _ = preset_configs(preset, dataset, depth, width, seed, trial)
    store = Store() if store is None else store
    return store.get(task.kind, task.record_config())


def sharpness_record(store: Store | None, dataset: str, depth: int, width: int, seed: int,
                     preset: str = "quick", trial: dict | None = None) -> dict | None:
    """The cached lambda_1 record of the same network (``result.lambda_1`` of the plain
    Hessian, ``result.lambda_1_eff`` with the input layer at the trials' rate), or ``None``."""
    _, stask = preset_configs(preset, dataset, depth, width, seed, trial)
    store = Store() if store is None else store
    return store.get(stask.kind, stask.record_config())
