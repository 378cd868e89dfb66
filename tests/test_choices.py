"""The "our choices" figure: its grid (one field changed at a time, defaults shared with the
main figure's committed records), the fits per value against the default with the
left-out searches, the compact effect text and the README column written from it."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from milr.choices import (EFFECT_HEADER, MARK_END, MARK_START, README_PATH, README_ROWS,
                          choice_table, choices_markdown, effect_cells, effect_text,
                          load_choice_results, update_readme_effects, value_label,
                          write_readme_effects)
from milr.conditions import (choice_default, choice_part_label, choice_section,
                             choice_value_text, figure_tasks)
from milr.data import SPLIT_SIZES
from milr.presets import get_preset
from milr.store import Store
from milr.sweep import eta_star_tasks, task_key

ROOT = Path(__file__).resolve().parent.parent
NAN = float("nan")


# -- the grid ------------------------------------------------------------------------------

def _differing(a: dict, b: dict) -> set:
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


def test_quick_grid_counts_and_one_field_changed_per_part():
    p = get_preset("quick")
    s = p["choices"]
    parts = figure_tasks(p, "choices")
    n_net = sum(1 for d in s["depths"] for w in s["widths"] if w >= d) * len(s["seeds"])
    assert n_net == 16
    assert len(parts["default"]) == len(p["datasets"]) * n_net
    want = {choice_part_label(f, v) for f, vs in s["alternatives"].items() for v in vs}
    assert set(parts) == {"default"} | want
    base = {(t.trial.dataset, t.trial.depth, t.trial.width, t.seed): t.record_config()
            for t in parts["default"]}
    default_keys = {task_key(t) for t in parts["default"]}
    for label, tasks in parts.items():
        if label == "default":
            continue
        field, _ = label.split("=", 1)
        for t in tasks:
            c = t.record_config()
            assert _differing(c, base[(c["dataset"], c["depth"], c["width"], c["seed"])]) \
                == {field}, label
        assert not {task_key(t) for t in tasks} & default_keys
        # every data set except where the value exceeds its validation split
        n_ds = sum(1 for d in p["datasets"]
                   if not (field == "n_val" and int(label.split("=")[1]) > SPLIT_SIZES[d][1]))
        assert len(tasks) == n_ds * n_net, label
    assert {t.trial.dataset for t in parts["n_val=500"]} == set(p["datasets"])
    assert {t.trial.readout_gain for t in parts["readout_gain=2"]} == {2.0}
    assert {t.trial.bias for t in parts["bias=false"]} == {False}
    assert {t.trial.blowup_factor for t in parts["blowup_factor=none"]} == {None}


def test_quick_defaults_are_the_main_figure_s_committed_records():
    p = get_preset("quick")
    main = {task_key(t) for t in eta_star_tasks(p["datasets"], p["depths"], p["widths"],
                                                p["seeds"], p["trial"], p["search"])}
    default = figure_tasks(p, "choices")["default"]
    assert {task_key(t) for t in default} <= main
    store = Store(ROOT / "data" / "results")
    assert all(store.state(t.kind, t.record_config()) == "done" for t in default)


def test_a_value_equal_to_the_default_is_left_out():
    p = get_preset("smoke")
    p["choices"]["alternatives"] = {"batch_size": [p["trial"]["batch_size"], 32],
                                    "n_val": [None]}
    parts = figure_tasks(p, "choices")
    assert "batch_size=64" not in parts and len(parts["batch_size=32"]) == 4
    assert {t.trial.n_val for t in parts["n_val=none"]} == {SPLIT_SIZES["gaussian"][1]}
    p["choices"]["alternatives"] = {"n_val": [5000, 100]}  # 5000 > the split: left out
    assert "n_val=5000" not in figure_tasks(p, "choices")
    p["choices"]["alternatives"] = {"batch_size": [p["trial"]["batch_size"], 32],
                                    "n_val": [None]}
    p["trial"]["n_val"] = None  # now None is the default itself: left out
    assert "n_val=none" not in figure_tasks(p, "choices")


def test_choice_helpers():
    assert choice_section("batch_size") == "trial" and choice_section("tol") == "search"
    with pytest.raises(ValueError, match="not a field of TrialConfig or SearchConfig"):
        choice_section("colour")
    with pytest.raises(ValueError, match="grid axis"):
        choice_section("depth")
    assert choice_value_text(0.05) == "0.05" and choice_value_text(None) == "none"
    assert choice_part_label("eval_every", 10) == "eval_every=10"
    p = get_preset("quick")
    assert choice_default(p, "tol") == 0.1 and choice_default(p, "max_trials") == 60
    assert value_label("n_val", None) == "whole split"
    assert value_label("blowup_factor", 100.0) == "100×"
    assert value_label("blowup_factor", None) == "off (non-finite only)"


# -- fits against the default --------------------------------------------------------------

def _synthetic(alpha_alt=0.8, drop_alt=(), drop_default=()):
    """eta* = 10 (dw)^-0.5 at the default, 10 (dw)^-alpha_alt under batch_size=32 and the
    default's law under tol=0.3; the listed (depth, width) points never reach t."""
    rows = []
    for d in (1, 2, 4):
        for w in (16, 32, 64):
            dw = d * w
            for part, choice, value, a, drop in (
                    ("default", "default", "default", 0.5, drop_default),
                    ("batch_size=32", "batch_size", "32", alpha_alt, drop_alt),
                    ("tol=0.3", "tol", "0.3", 0.5, ())):
                eta = NAN if (d, w) in drop else 10.0 * dw ** -a
                rows.append(dict(dataset="gaussian", depth=d, width=w, seed=0, dw=dw,
                                 eta_star=eta, part=part, choice=choice, value=value))
    return pd.DataFrame(rows)


def test_choice_table_exponents_and_left_out_searches():
    t = choice_table(_synthetic(drop_alt=[(4, 64)]), n_boot=200).set_index("part")
    assert list(t.index) == ["default", "batch_size=32", "tol=0.3"]
    assert t.loc["default", "alpha"] == pytest.approx(0.5, abs=1e-12)
    b = t.loc["batch_size=32"]
    assert b.alpha == pytest.approx(0.8, abs=1e-12) and b.d_alpha == pytest.approx(0.3)
    assert (b.n_used, b.n_dropped, b.n_all) == (8, 1, 9) and b.scored
    assert not b.inside and not b.overlap  # exact laws: point intervals
    assert b.n_common == 8 and b.d_alpha_common == pytest.approx(0.3, abs=1e-12)
    tol = t.loc["tol=0.3"]
    assert tol.inside and tol.d_alpha == pytest.approx(0.0, abs=1e-12)
    assert tol.n_common == 9  # the tolerance choice loses nothing


def test_common_survivors_show_what_leaving_out_does():
    """The default's law steepens on the largest networks, which never reach t under the
    alternative: fitted on its survivors the alternative seems to lower alpha, but on the
    networks both reach the two agree (d_alpha_common = 0)."""
    df = _synthetic(alpha_alt=0.5)
    big = df.dw >= 128  # (2, 64), (4, 32), (4, 64)
    df.loc[(df.part == "default") & big, "eta_star"] *= 0.25
    alt = df.part == "batch_size=32"
    df.loc[alt & big, "eta_star"] = NAN
    r = choice_table(df, n_boot=200).set_index("part")
    d0, b = r.loc["default"], r.loc["batch_size=32"]
    assert d0.alpha > 0.6 and (d0.n_used, d0.n_dropped) == (9, 0)
    assert (b.n_used, b.n_dropped, b.n_all) == (6, 3, 9) and b.scored  # 6 of 9 = 2/3
    assert b.alpha == pytest.approx(0.5, abs=1e-12)
    assert b.d_alpha == pytest.approx(0.5 - d0.alpha, abs=1e-12) and b.d_alpha < -0.1
    assert b.n_common == 6
    assert b.alpha_default_common == pytest.approx(0.5, abs=1e-12)
    assert b.d_alpha_common == pytest.approx(0.0, abs=1e-12)
    # two more lost (d w = 32): 4 of 9 reach t, not scored
    df.loc[alt & (df.dw == 32), "eta_star"] = NAN
    b2 = choice_table(df, n_boot=200).set_index("part").loc["batch_size=32"]
    assert b2.n_used == 4 and not b2.scored


def test_effect_text_and_markdown():
    t = choice_table(_synthetic(), n_boot=200)
    assert effect_text(t, "batch_size") == "32: **G +0.30**"  # outside the interval: bold
    assert effect_text(t, "tol") in ("0.3: G +0.00", "0.3: G −0.00")
    assert effect_text(t, "nope") == ""
    t2 = choice_table(_synthetic(drop_alt=[(1, 16), (1, 32), (1, 64), (2, 16)]), n_boot=200)
    assert effect_text(t2, "batch_size") == "32: (G +0.30, 5/9 reach t)"  # not scored
    cells = effect_cells(t)
    assert set(cells) == set(README_ROWS)
    assert cells["batch, budget"].startswith("32: **G +0.30**; step budget")
    assert cells["network"] == "not varied"  # no bias choice in this table
    md = choices_markdown(t)
    assert "| **default** | default | 0.50 [0.50, 0.50], R² 1.00, 9/9 |" in md
    assert f"| choice | {EFFECT_HEADER} |" in md


# -- the README column ---------------------------------------------------------------------

TEXT = f"""intro | not a table

{MARK_START}
| setting | our choice | why |
|---|---|---|
| batch, budget | batch 64 | fits |
| search | a \\| b | ok |
| seeds | s | t |
{MARK_END}

after
"""


def test_readme_column_appended_replaced_and_idempotent():
    cells = {"batch, budget": "32: FM −0.02 | x", "search": "0.05: FM +0.01"}
    out = update_readme_effects(TEXT, cells, note="legend line")
    table = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert table[0] == f"| setting | our choice | why | {EFFECT_HEADER} |"
    assert table[1] == "| batch, budget | batch 64 | fits | 32: FM −0.02 \\| x |"
    assert table[2] == "| search | a \\| b | ok | 0.05: FM +0.01 |"  # escaped pipe kept
    assert table[3] == "| seeds | s | t | not varied |"
    assert "|---|---|---|---|" in out and "legend line" in out
    assert out.startswith("intro | not a table\n") and out.endswith(f"{MARK_END}\n\nafter\n")
    assert update_readme_effects(out, cells, note="legend line") == out  # idempotent
    again = update_readme_effects(out, {"seeds": "new"})
    assert "| seeds | s | t | new |" in again and "legend line" not in again
    assert again.count(EFFECT_HEADER) == 1
    with pytest.raises(ValueError, match="choices-effect"):
        update_readme_effects("no markers", cells)
    with pytest.raises(ValueError, match="no Markdown table"):
        update_readme_effects(f"{MARK_START}\ntext\n{MARK_END}", cells)


def test_readme_has_the_block_and_its_rows(tmp_path):
    text = README_PATH.read_text(encoding="utf-8")
    assert text.count(MARK_START) == 1 and text.count(MARK_END) == 1
    block = text[text.index(MARK_START):text.index(MARK_END)]
    settings = {ln.split("|")[1].strip() for ln in block.splitlines() if ln.startswith("| ")}
    assert set(README_ROWS) <= settings  # every row the column fills exists
    copy = tmp_path / "README.md"
    copy.write_text(text, encoding="utf-8")
    write_readme_effects({"search": "X"}, path=copy)
    new = copy.read_text(encoding="utf-8")
    assert new[:new.index(MARK_START)] == text[:text.index(MARK_START)]
    assert new[new.index(MARK_END):] == text[text.index(MARK_END):]
    assert write_readme_effects({"search": "X"}, path=copy) is False  # unchanged: no write


# -- from a store, and the notebook --------------------------------------------------------

def test_load_choice_results_from_a_store(tmp_path):
    p = get_preset("smoke")
    store = Store(tmp_path / "r")
    parts = figure_tasks(p, "choices")
    for label, tasks in parts.items():
        for t in tasks:
            dw = t.trial.depth * t.trial.width
            a = 0.7 if label == "batch_size=32" else 0.5
            store.put(t.kind, t.record_config(), {"eta_star": 3.0 * dw ** -a,
                                                  "status": "converged"},
                      {"code_version": "milr test", "wall_time": 1.0})
    df = load_choice_results(p, store)
    assert len(df) == sum(len(ts) for ts in parts.values())
    t = choice_table(df, p, n_boot=100).set_index("part")
    assert t.loc["batch_size=32", "d_alpha"] == pytest.approx(0.2, abs=1e-9)
    assert t.loc["batch_size=32", "default_value"] == "64"
    assert math.isfinite(t.loc["tol=0.3", "alpha"]) and bool(t.loc["tol=0.3", "inside"])
    assert len(load_choice_results(p, Store(tmp_path / "empty"))) == 0


def test_our_choices_notebook_smoke_writes_the_table_not_the_readme(tmp_path):
    pm = pytest.importorskip("papermill")
    readme = README_PATH.read_text(encoding="utf-8")
    nb = ROOT / "notebooks" / "fig_our_choices.ipynb"
    figs = tmp_path / "figs"
    pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), kernel_name="python3",
                        cwd=str(nb.parent), progress_bar=False,
                        parameters={"smoke": True, "store_dir": str(tmp_path / "store"),
                                    "figure_dir": str(figs)})
    assert (figs / "fig_our_choices.png").stat().st_size > 20_000
    md = (figs / "our_choices.md").read_text(encoding="utf-8")
    assert "| **default** |" in md and EFFECT_HEADER in md
    assert README_PATH.read_text(encoding="utf-8") == readme
    n = len({task_key(t) for ts in figure_tasks(get_preset("smoke"), "choices").values()
             for t in ts})
    assert len(list((tmp_path / "store" / "eta_star").glob("*.json"))) == n
    assert np.isfinite(n)
