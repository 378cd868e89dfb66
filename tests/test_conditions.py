"""milr.conditions: fits per setting, residuals from a reference fit, where the law breaks,
the input layer's NTK share, and the figure grids (keys shared with the main figure)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from milr.conditions import (Breakdown, add_residuals, breakdown_by_seed, config_table,
                             eta_star_reference, figure_settings, figure_tasks, fit_table,
                             input_term_share, late_tasks, law_breakdown, ntk_alpha,
                             reference_fit)
from milr.presets import get_preset
from milr.sweep import eta_star_tasks, task_key


def _grid(alpha, c, depths=(1, 2, 4, 8), widths=(32, 128, 512), seeds=(0, 1), ds="gaussian",
          noise=0.0, rng=None):
    rows = []
    for d in depths:
        for w in widths:
            for s in seeds:
                e = c * (d * w) ** -alpha
                if noise:
                    e *= math.exp(noise * rng.standard_normal())
                rows.append(dict(dataset=ds, depth=d, width=w, seed=s, dw=d * w, eta_star=e))
    return pd.DataFrame(rows)


def test_fit_table_recovers_exponents_per_group():
    df = pd.concat([_grid(0.5, 10.0).assign(setting="a"), _grid(1.0, 3.0).assign(setting="b")])
    df.loc[df.index[:1], "eta_star"] = np.nan  # one failed search in group a
    t = fit_table(df, "setting", n_boot=50).set_index("setting")
    assert t.loc["a", "alpha"] == pytest.approx(0.5, abs=1e-12)
    assert t.loc["b", "alpha"] == pytest.approx(1.0, abs=1e-12)
    assert t.loc["b", "c"] == pytest.approx(3.0, rel=1e-10)
    assert t.loc["a", "r2"] == pytest.approx(1.0)
    assert t.loc["a", "n_dropped"] == 1 and t.loc["a", "n_used"] == 23
    assert t.loc["b", "n_configs"] == 12
    with pytest.raises(ValueError, match="column"):
        fit_table(df, "nope")


def test_reference_fit_uses_only_wide_networks_and_residuals_are_exact():
    df = _grid(0.7, 5.0, depths=(1, 2, 4, 8, 16), widths=(16, 64, 256))
    narrow = df.width < 16 * df.depth
    df.loc[narrow, "eta_star"] *= 3.0  # narrow nets sit a factor 3 above the law
    f = reference_fit(df, min_width_over_depth=16)
    assert f.alpha == pytest.approx(0.7, abs=1e-12) and f.n_used == (~narrow).sum()
    r = add_residuals(df, f)
    np.testing.assert_allclose(r.loc[narrow, "log_resid"], math.log(3.0), atol=1e-12)
    np.testing.assert_allclose(r.loc[~narrow, "log_resid"], 0.0, atol=1e-12)
    assert (r.d_over_w == df.depth / df.width).all() and r.reached.all()
    with pytest.raises(ValueError, match="min_width_over_depth"):
        reference_fit(df, -1.0)


def test_law_breakdown_definition():
    r = [1 / 16, 1 / 8, 1 / 4, 1 / 4, 1 / 2, 1.0]
    b = law_breakdown(r, [False, False, True, False, False, True])
    # 1/4: 1 of 2 fail (half counts as mostly), 1/2 passes, 1 fails -> breaks at 1 only
    assert (b.ratio, b.last_ok, b.first_failure) == (1.0, 0.5, 0.25)
    assert b.per_ratio == [(1 / 16, 1, 0), (1 / 8, 1, 0), (0.25, 2, 1), (0.5, 1, 0),
                           (1.0, 1, 1)]
    b = law_breakdown(r, [False, False, True, False, True, True])
    assert (b.ratio, b.last_ok) == (0.25, 0.125)
    b = law_breakdown(r, [False] * 6)
    assert math.isinf(b.ratio) and b.last_ok == 1.0 and math.isnan(b.first_failure)
    b = law_breakdown(r, [True] * 6)
    assert b.ratio == 1 / 16 and math.isnan(b.last_ok)
    assert math.isnan(law_breakdown([], []).ratio)
    with pytest.raises(ValueError, match="equal lengths"):
        law_breakdown([1.0], [True, False])
    with pytest.raises(ValueError, match="d_over_w"):
        law_breakdown([0.0], [True])


def test_config_table_and_breakdown_by_seed():
    df = _grid(0.5, 4.0, depths=(1, 4, 16, 32), widths=(16, 64), seeds=(0, 1, 2))
    f = reference_fit(df, 16)
    # d = 16: eta* 3x too large (a factor above the tolerance 2); d = 32, w = 16: only
    # seed 0 reaches the threshold; d = 32, w = 64: within tolerance (x 1.5)
    df.loc[df.depth == 16, "eta_star"] *= 3.0
    df.loc[(df.depth == 32) & (df.width == 16) & (df.seed > 0), "eta_star"] = np.nan
    df.loc[(df.depth == 32) & (df.width == 64), "eta_star"] *= 1.5
    r = add_residuals(df, f)
    t = config_table(r, tolerance=2.0).set_index(["depth", "width"])
    assert t.loc[(16, 16), "fails"] and t.loc[(16, 64), "fails"]
    assert t.loc[(32, 16), "fails"] and t.loc[(32, 16), "n_reached"] == 1
    assert not t.loc[(32, 64), "fails"] and not t.loc[(4, 64), "fails"]
    assert t.loc[(16, 64), "resid_median"] == pytest.approx(math.log(3.0))
    b = law_breakdown(t.d_over_w, t.fails)
    # d/w: 1/64 .. 1/16 ok, 1/4 (16/64) fails, 1/2 (32/64) ok, 1 (16/16) fails, 2 fails
    assert (b.ratio, b.last_ok, b.first_failure) == (1.0, 0.5, 0.25)
    per_seed = breakdown_by_seed(r, 2.0).set_index("seed")
    # seed 0 reached the threshold on the law at d/w = 2, the largest ratio: no breakdown
    assert math.isinf(per_seed.loc[0, "ratio"]) and per_seed.loc[0, "first_failure"] == 0.25
    assert per_seed.loc[1, "ratio"] == 1.0 and per_seed.loc[2, "first_failure"] == 0.25
    with pytest.raises(ValueError, match="tolerance"):
        config_table(r, tolerance=1.0)


def test_input_term_share_closed_form():
    # Theta = w r (s_{d+1} + sum_{l=2}^{d} s_l / 2) + s_1 q / 2 + sum_{l<=d} s_l / 2 + s_{d+1}
    # at d = 2, w = 64, q = n0 = 784 (r = 1), s_1 = 1: 96 + 392 + 1 + 1 = 490; frozen 97.5
    q = np.full(5, 784.0)
    assert input_term_share(q, 784, 2, 64, 1.0) == pytest.approx(392.5 / 490)
    assert input_term_share(q, 784, 2, 64, 0.0) == 0.0
    small = input_term_share(q, 784, 2, 64, 0.01)
    assert small == pytest.approx(3.925 / (97.5 + 3.925))


def test_ntk_alpha_values():
    # d = 1, frozen input layer, r = 1: Theta = w + 1 exactly
    a = ntk_alpha(np.array([784.0]), 784, [1], [1000, 100000], 0.0)
    assert a == pytest.approx(math.log(100001 / 1001) / math.log(100))
    # a large input term (constant in d w) flattens the law; a frozen one does not
    q = np.full(3, 784.0)
    a1 = ntk_alpha(q, 784, [1, 2, 4], [32, 128, 512], 1.0)
    a0 = ntk_alpha(q, 784, [1, 2, 4], [32, 128, 512], 0.0)
    assert 0 < a1 < 0.5 < a0 < 1.0


def test_figure_tasks_share_keys_with_the_main_figure():
    p = get_preset("quick")
    main = {task_key(t) for t in eta_star_tasks(p["datasets"], p["depths"], p["widths"],
                                                p["seeds"], p["trial"], p["search"])}
    il = figure_tasks(p, "input_lr")
    assert {task_key(t) for t in il["s=0.01"]} <= main
    assert not {task_key(t) for t in il["s=1"]} & main
    tb = figure_tasks(p, "threshold_budget")
    assert {task_key(t) for t in tb["budget=400"] + tb["t=0.75"] + tb["t=0.9"]} <= main
    assert {t.trial.step_budget for t in tb["budget=800"]} == {800}
    wd = figure_tasks(p, "width_vs_depth")
    assert {task_key(t) for t in wd["reference"]} == main
    assert any(t.trial.width < t.trial.depth for t in wd["narrow"])  # every d/w kept
    assert {task_key(t) for t in figure_tasks(p, "late_lr")["reference"]} <= main
    s = figure_settings(p, "input_lr")
    assert s["search"] == p["search"] and s["trial"]["step_budget"] == 400
    with pytest.raises(ValueError, match="figure"):
        figure_settings(p, "nope")
    with pytest.raises(ValueError, match="no 'late_lr' entry"):
        figure_settings({"datasets": [], "trial": {}, "search": {}}, "late_lr")


def test_late_tasks_use_the_median_eta_star():
    p = get_preset("smoke")
    ref = pd.DataFrame([dict(dataset="gaussian", depth=1, width=16, seed=s, eta_star=e)
                        for s, e in [(0, 2.0), (1, 3.0), (2, 10.0)]]
                       + [dict(dataset="gaussian", depth=2, width=16, seed=0,
                               eta_star=float("nan"))])
    assert eta_star_reference(ref)[("gaussian", 1, 16)] == 3.0
    tasks = late_tasks(p, ref)
    assert [(t.depth, t.width) for t in tasks] == [(1, 16)]  # the others have no eta*
    t = tasks[0]
    assert t.warmup_lr == 0.3 and t.warmup_steps == 60 and t.trial_steps == 40
    assert t.window == 2 and t.eval_every == p["trial"]["eval_every"]
    assert t.input_lr_scale == p["trial"]["input_lr_scale"] and t.search.method == "bisect"
    assert t.search.eta_lo == p["search"]["eta_lo"]


def test_breakdown_dataclass_roundtrip():
    b = Breakdown(0.25, 0.125, 0.25, [(0.125, 1, 0), (0.25, 1, 1)])
    assert Breakdown(**b.to_dict()) == b


# -- the condition notebooks, end to end on the smoke preset ----------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["fig_width_vs_depth", "fig_input_lr", "fig_threshold_budget"])
def test_condition_notebook_runs_with_smoke_parameters(tmp_path, name):
    """papermill run in smoke mode: computes the smoke grids into a temporary store and
    writes the figure; the store holds exactly the figure's records."""
    pm = pytest.importorskip("papermill")
    from milr.conditions import figure_tasks
    from milr.store import Store
    from milr.sweep import unique_tasks

    nb = ROOT / "notebooks" / f"{name}.ipynb"
    store, figs = tmp_path / "store", tmp_path / "figs"
    pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), kernel_name="python3",
                        cwd=str(nb.parent), progress_bar=False,
                        parameters={"smoke": True, "store_dir": str(store),
                                    "figure_dir": str(figs)})
    assert (figs / f"{name}.png").stat().st_size > 20_000 and (figs / f"{name}.pdf").exists()
    parts = figure_tasks(get_preset("smoke"), name.removeprefix("fig_"))
    tasks = unique_tasks([t for ts in parts.values() for t in ts])
    st = Store(store)
    assert all(st.state(t.kind, t.record_config()) == "done" for t in tasks)
    assert len(list((store / "eta_star").glob("*.json"))) == len(tasks)


def test_search_best_accuracy_one_row_per_record(tmp_path):
    from milr.conditions import search_best_accuracy
    from milr.store import Store

    p = get_preset("smoke")
    t = eta_star_tasks(["gaussian"], [1], [16], [0], p["trial"], p["search"])[0]
    st = Store(tmp_path)
    st.put(t.kind, t.record_config(), {"eta_star": 1.0, "trials": [
        {"eta": 1.0, "best_acc": 0.7}, {"eta": 2.0, "best_acc": float("nan")},
        {"eta": 0.5, "best_acc": 0.81}]})
    out = search_best_accuracy([t, t], st)  # listed twice (two grids share it)
    assert len(out) == 1 and out.best_acc.iloc[0] == 0.81
