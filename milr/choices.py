"""Our choices: how the exponent alpha of eta* ~ c (d w)^-alpha moves with each setting that
the paper leaves open and milr fixes (README, Method).

The grid is the preset's ``choices`` entry (:mod:`milr.presets`): a reduced grid of networks
on which the preset's rules are run once as they are (``default``: the main figure's records)
and once per *alternative*, one field of :class:`milr.config.TrialConfig` or
:class:`milr.config.SearchConfig` changed at a time (tasks:
``milr.conditions.figure_tasks(preset, "choices")``). This module reads those records and
measures, per data set and alternative:

* the power-law fit (alpha, its 95 % bootstrap interval, R^2) and how many searches never
  reached the threshold and were left out of it (:func:`choice_table`);
* the shift of alpha against the default, whether the alternative's alpha lies inside the
  default's interval and whether the two intervals overlap;
* the same shift restricted to the networks that reach t under the default *and* every value
  of that choice (``*_common`` columns): the difference between the two shifts is what
  leaving out the searches that never reached t does to alpha;
* the text of the README's column "effect on α (measured)" (:func:`effect_cells`,
  :func:`update_readme_effects`), written by ``notebooks/fig_our_choices.ipynb`` from the
  cache, never by hand.

Everything here is our choice (which values, the grid, the text); the rule that scores it is
:func:`milr.scorecard.verdict_choice`.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .conditions import choice_default, choice_part_label, choice_value_text, figure_tasks
from .data import DISPLAY_NAMES, REPO_ROOT
from .fit import fit_power_law
from .store import Store
from .sweep import load_results

__all__ = ["CHOICE_NAMES", "SHORT_NAMES", "README_ROWS", "EFFECT_HEADER", "MARK_START",
           "MARK_END", "MIN_USED", "choice_name", "value_label", "load_choice_results",
           "choice_table", "effect_text", "effect_cells", "choices_markdown",
           "update_readme_effects", "write_readme_effects", "README_PATH"]

#: Readable name of each choice (a configuration field); unknown fields read as themselves.
CHOICE_NAMES = {
    "readout_gain": "read-out initialisation",
    "bias": "biases",
    "blowup_factor": "blow-up rule",
    "eval_every": "evaluation period",
    "n_val": "validation subset",
    "batch_size": "batch size",
    "tol": "bracket tolerance",
}

#: Short data-set names of the compact effect text.
SHORT_NAMES = {"fashion-mnist": "FM", "gaussian": "G", "mnist-5k": "M5k", "mnist": "M",
               "cifar10": "C10"}

#: A fit that lost more than a third of its searches (never reached t) is shown, not scored
#: (the same rule as the threshold/budget robustness row of the scorecard).
MIN_USED = 2 / 3

#: The README's Method table: its "setting" cell -> the choices measured in that row, and a
#: note for what this grid does not vary. Rows not listed read "not varied".
README_ROWS: dict[str, tuple[tuple[str, ...], str]] = {
    "network": (("bias",), ""),
    "initialisation": (("readout_gain",), ""),
    "input layer": ((), "not varied here: condition (ii), see `fig_input_lr`"),
    "batch, budget": (("batch_size",), "step budget: see `fig_threshold_budget`"),
    "evaluation": (("eval_every", "n_val"), ""),
    "divergence": (("blowup_factor",), ""),
    "thresholds": ((), "see `fig_threshold_budget`"),
    "search": (("tol",), ""),
}
NOT_VARIED = "not varied"

EFFECT_HEADER = "effect on α (measured)"
MARK_START, MARK_END = "<!-- choices-effect:start -->", "<!-- choices-effect:end -->"
README_PATH = REPO_ROOT / "README.md"


def choice_name(field: str) -> str:
    """The readable name of choice ``field`` (:data:`CHOICE_NAMES`)."""
    return CHOICE_NAMES.get(field, field)


def value_label(field: str, value) -> str:
    """A choice's value for readers: ``n_val`` None is the whole split, ``blowup_factor``
    None is "off (non-finite only)", factors read ``100×``; ``readout_gain`` g reads
    ``g/fan_in``, ``bias`` False "no biases"; others as
    :func:`milr.conditions.choice_value_text`."""
    if field == "blowup_factor":
        if value is None or value == "off":
            return "off (non-finite only)"
        return f"{choice_value_text(value)}×"
    if field == "n_val" and value is None:
        return "whole split"
    if field == "readout_gain" and isinstance(value, (int, float)):
        return f"{choice_value_text(value)}/fan_in"
    if field == "bias" and isinstance(value, bool):
        return "zero-initialised, trained" if value else "no biases"
    return choice_value_text(value)


# ------------------------------------------------------------------------------ results

def load_choice_results(preset: dict, store=None,
                        datasets: Sequence[str] | None = None) -> pd.DataFrame:
    """The cached eta* records of the preset's ``choices`` grid (nothing is computed), one
    row per (part, record) with the columns of :func:`milr.sweep.load_results` plus ``part``
    (``"default"`` or ``"<field>=<value>"``), ``choice`` (the field, ``"default"`` for the
    defaults) and ``value`` (the value's text, :func:`value_label`). A default record appears
    once, in the ``default`` part."""
    store = Store() if store is None else store
    parts = figure_tasks(preset, "choices", datasets)
    alts = {choice_part_label(f, v): (f, v)
            for f, vs in preset["choices"]["alternatives"].items() for v in vs}
    frames = []
    for part, tasks in parts.items():
        d = load_results(tasks, store)
        if not len(d):
            continue
        f, v = alts.get(part, ("default", None))
        frames.append(d.assign(part=part, choice=f,
                               value="default" if f == "default" else value_label(f, v)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["dataset", "depth", "width", "seed", "dw", "eta_star", "part", "choice",
                 "value"])


def _fit(g: pd.DataFrame, n_boot: int):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fit_power_law(pd.to_numeric(g["dw"], errors="coerce"),
                             pd.to_numeric(g["eta_star"], errors="coerce"), n_boot=n_boot,
                             seed=0)


def _reached(g: pd.DataFrame) -> set:
    y = pd.to_numeric(g["eta_star"], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(y) & (y > 0)
    return set(map(tuple, g.loc[ok, ["depth", "width", "seed"]].to_numpy().tolist()))


def _on(g: pd.DataFrame, points: set) -> pd.DataFrame:
    keys = list(map(tuple, g[["depth", "width", "seed"]].to_numpy().tolist()))
    return g[[k in points for k in keys]]


def choice_table(df: pd.DataFrame, preset: dict | None = None, n_boot: int = 1000,
                 min_used: float = MIN_USED) -> pd.DataFrame:
    """One row per (data set, part) of :func:`load_choice_results` output ``df``: the default
    first, then the alternatives in the order of the preset's ``alternatives`` (``preset``
    given) or of ``df``.

    Columns: ``dataset``, ``part``, ``choice``, ``value``, ``is_default``; the fit of eta* on
    d w (:func:`milr.fit.fit_power_law`, 95 % bootstrap interval, seed 0): ``alpha``,
    ``alpha_lo``, ``alpha_hi``, ``r2``, ``n_used``, ``n_dropped`` (searches that never reached
    t, left out of the fit), ``n_all``; against the default of the same data set:
    ``d_alpha`` (alpha - alpha_default), ``inside`` (alpha inside the default's interval),
    ``overlap`` (the intervals overlap), ``scored`` (n_used >= ``min_used`` x n_all);
    and on the networks that reach t under the default and every value of that choice:
    ``n_common``, ``alpha_common``, ``alpha_default_common``, ``d_alpha_common``. The default's
    own row has ``d_alpha`` 0 and NaN common columns. ``preset`` also supplies the default
    value of each choice (``default_value`` column, text)."""
    rows = []
    if not len(df):
        return pd.DataFrame(rows)
    order = list(dict.fromkeys(df["part"]))
    if preset is not None:
        want = ["default"] + [choice_part_label(f, v) for f, vs in
                              preset["choices"]["alternatives"].items() for v in vs]
        order = [p for p in want if p in order] + [p for p in order if p not in want]
    for ds in list(dict.fromkeys(df["dataset"])):
        d = df[df["dataset"] == ds]
        dflt = d[d["part"] == "default"]
        f0 = _fit(dflt, n_boot) if len(dflt) else None
        common_cache: dict[str, tuple] = {}
        for part in order:
            g = d[d["part"] == part]
            if not len(g):
                continue
            choice, value = g["choice"].iloc[0], g["value"].iloc[0]
            f = f0 if part == "default" else _fit(g, n_boot)
            row = dict(dataset=ds, part=part, choice=choice, value=value,
                       is_default=part == "default", alpha=f.alpha, alpha_lo=f.alpha_lo,
                       alpha_hi=f.alpha_hi, r2=f.r2, n_used=int(f.n_used),
                       n_dropped=int(f.n_dropped), n_all=int(f.n_used + f.n_dropped))
            row["default_value"] = (value_label(choice, choice_default(preset, choice))
                                    if preset is not None and choice != "default" else "")
            row["scored"] = bool(row["n_all"] and row["n_used"] >= min_used * row["n_all"])
            if f0 is None or part == "default":
                row.update(d_alpha=0.0 if part == "default" else math.nan,
                           inside=part == "default", overlap=part == "default",
                           n_common=math.nan, alpha_common=math.nan,
                           alpha_default_common=math.nan, d_alpha_common=math.nan)
                rows.append(row)
                continue
            row["d_alpha"] = f.alpha - f0.alpha
            row["inside"] = bool(f0.alpha_lo <= f.alpha <= f0.alpha_hi)
            row["overlap"] = bool(not (f.alpha_hi < f0.alpha_lo or f0.alpha_hi < f.alpha_lo))
            if choice not in common_cache:  # networks reaching t under every value of it
                pts = _reached(dflt)
                for p2 in d.loc[d["choice"] == choice, "part"].unique():
                    pts &= _reached(d[d["part"] == p2])
                common_cache[choice] = (pts, _fit(_on(dflt, pts), n_boot))
            pts, fd = common_cache[choice]
            fc = _fit(_on(g, pts), n_boot)
            row.update(n_common=len(pts), alpha_common=fc.alpha, alpha_default_common=fd.alpha,
                       d_alpha_common=fc.alpha - fd.alpha)
            rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ text

def _signed(x: float) -> str:
    if not np.isfinite(x):
        return "n/a"
    return f"{round(x, 2) + 0.0:+.2f}".replace("-", "−")  # + 0.0: no "−0.00"


def effect_text(table: pd.DataFrame, choice: str) -> str:
    """The measured effect of one choice, compactly: per alternative value, Δα against the
    default per data set (short names, :data:`SHORT_NAMES`); **bold** when the alternative's
    α lies outside the default's 95 % interval; in parentheses (with the searches that reached
    t) when the fit lost more than a third of its searches (not scored). ``table``: the
    output of :func:`choice_table`. Empty string when the choice is not in the table."""
    t = table[table["choice"] == choice]
    out = []
    for value in dict.fromkeys(t["value"]):
        cells = []
        for _, r in t[t["value"] == value].iterrows():
            s = f"{SHORT_NAMES.get(r.dataset, r.dataset)} {_signed(r.d_alpha)}"
            if not r.scored:
                s = f"({s}, {r.n_used}/{r.n_all} reach t)"
            elif np.isfinite(r.d_alpha) and not r.inside:
                s = f"**{s}**"
            cells.append(s)
        out.append(f"{value}: " + ", ".join(cells))
    return "; ".join(out)


def effect_cells(table: pd.DataFrame, rows: Mapping = README_ROWS) -> dict[str, str]:
    """``{README Method row: text}`` of the column "effect on α (measured)": the
    :func:`effect_text` of each choice measured in that row (named when the row holds
    several), then the row's note (:data:`README_ROWS`)."""
    have = set(table["choice"]) if len(table) else set()
    cells = {}
    for row, (choices, note) in rows.items():
        measured = [c for c in choices if c in have]
        parts = [(f"{choice_name(c)}: " if len(measured) > 1 else "") + effect_text(table, c)
                 for c in measured]
        if note:
            parts.append(note)
        cells[row] = "; ".join(parts) if parts else NOT_VARIED
    return cells


def legend_text(table: pd.DataFrame) -> str:
    """One line that explains :func:`effect_text` (data-set abbreviations, bold, brackets)."""
    names = [d for d in dict.fromkeys(table["dataset"])] if len(table) else []
    abbr = ", ".join(f"{SHORT_NAMES.get(d, d)} = {DISPLAY_NAMES.get(d, d)}" for d in names)
    return (f"Δα: the exponent under the alternative value minus the default's, on the "
            f"reduced grid of `notebooks/fig_our_choices.ipynb` ({abbr}); **bold**: outside "
            "the default's 95 % bootstrap interval; in parentheses: more than a third of the "
            "searches never reached t (not scored). Written from the cache by that notebook.")


def choices_markdown(table: pd.DataFrame, title: str = "Our choices: effect on α") -> str:
    """``figures/our_choices.md``: per choice and value, α [95 %], R² and the searches that
    reached t per data set, the default first, then the column "effect on α (measured)"
    per choice."""
    if not len(table):
        return f"# {title}\n\nNo records.\n"
    ds = list(dict.fromkeys(table["dataset"]))
    head = ["choice", "value"] + [DISPLAY_NAMES.get(d, d) for d in ds]
    lines = [f"# {title}", "",
             "Generated by `notebooks/fig_our_choices.ipynb` from the cached results. Per data "
             "set: α [95 % interval], R², searches that reached t / all (the others are left "
             "out of the fit).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (choice, value), g in table.groupby(["choice", "value"], sort=False):
        cells = [choice_name(choice) if choice != "default" else "**default**",
                 value if choice == "default" else
                 f"{value} (default {g.default_value.iloc[0]})"]
        for d in ds:
            r = g[g["dataset"] == d]
            if not len(r):
                cells.append("—")
                continue
            r = r.iloc[0]
            cells.append(f"{r.alpha:.2f} [{r.alpha_lo:.2f}, {r.alpha_hi:.2f}], R² {r.r2:.2f}, "
                         f"{r.n_used}/{r.n_all}" if np.isfinite(r.alpha) else "no fit")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", f"| choice | {EFFECT_HEADER} |", "|---|---|"]
    for choice in dict.fromkeys(table["choice"]):
        if choice != "default":
            lines.append(f"| {choice_name(choice)} | {effect_text(table, choice)} |")
    lines += ["", legend_text(table), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ README

_SPLIT = re.compile(r"(?<!\\)\|")


def _cells(line: str) -> list[str]:
    parts = _SPLIT.split(line.strip())
    return [p.strip() for p in parts[1:-1]]


def update_readme_effects(text: str, cells: Mapping[str, str], note: str = "",
                          header: str = EFFECT_HEADER) -> str:
    """``text`` (the README) with the Markdown table between :data:`MARK_START` and
    :data:`MARK_END` given a last column ``header``: appended if the table has none, else its
    cells replaced. Row ``r`` (its first cell) gets ``cells[r]``, or "not varied"; pipes in a
    cell are escaped. ``note`` (one line) is written below the table, inside the markers.
    Idempotent; nothing outside the markers changes. ``ValueError`` if the markers are
    missing, out of order, or enclose no table."""
    i, j = text.find(MARK_START), text.find(MARK_END)
    if i < 0 or j < 0 or j < i:
        raise ValueError(f"the README has no {MARK_START} ... {MARK_END} block (in this order)")
    block = text[i + len(MARK_START):j]
    table = [ln for ln in block.splitlines() if ln.strip().startswith("|")]
    if len(table) < 2:
        raise ValueError("the README's choices-effect block holds no Markdown table")
    head = _cells(table[0])
    has = head[-1] == header
    n_keep = len(head) - 1 if has else len(head)
    out = ["| " + " | ".join(head[:n_keep] + [header]) + " |",
           "|" + "---|" * (n_keep + 1)]
    for ln in table[2:]:
        c = _cells(ln)[:n_keep]
        val = str(cells.get(c[0], NOT_VARIED)).replace("\n", " ")
        val = _SPLIT.sub(r"\\|", val)
        out.append("| " + " | ".join(c + [val]) + " |")
    body = "\n" + "\n".join(out) + "\n" + (f"\n{note}\n" if note else "")
    return text[:i + len(MARK_START)] + body + text[j:]


def write_readme_effects(cells: Mapping[str, str], note: str = "",
                         path: str | Path | None = None) -> bool:
    """Rewrite the README's column (:func:`update_readme_effects`) in ``path`` (default: the
    checkout's README.md); writes only when the text changes. Returns whether it did."""
    p = Path(path) if path is not None else README_PATH
    old = p.read_text(encoding="utf-8")
    new = update_readme_effects(old, cells, note)
    if new != old:
        p.write_text(new, encoding="utf-8")
    return new != old
