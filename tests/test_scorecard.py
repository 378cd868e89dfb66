"""milr.scorecard: each verdict rule on known fits, the Markdown and PNG renderings, and the
evidence assembled from a store of synthetic records with known exponents."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from milr.fit import PowerLawFit
from milr.scorecard import (CLAIMS, NO_DATA, NOT_ENOUGH_DATA, NOT_SUPPORTED, PARTLY, RULES, SUPPORTED,
                            collect_scorecard, fmt_fit, intervals_overlap, scorecard_figure,
                            to_markdown, verdict_input_lr, verdict_late, verdict_power_law,
                            verdict_choice, verdict_choices, verdict_robustness,
                            verdict_sharpness_bounds,
                            verdict_sharpness_relation, verdict_width_depth)


def fit(alpha, lo, hi, r2, n=20):
    return PowerLawFit(alpha, 0.0, lo, hi, r2, n, 0, 0.95)


NAN = float("nan")


@pytest.mark.parametrize("f, expect", [
    (fit(0.6, 0.5, 0.7, 0.9), SUPPORTED),
    (fit(0.6, 0.5, 0.7, 0.8), SUPPORTED),        # R^2 threshold is inclusive
    (fit(0.6, 0.5, 0.7, 0.79), PARTLY),
    (fit(0.6, -0.1, 0.9, 0.9), NOT_SUPPORTED),   # interval includes 0
    (fit(0.6, 0.1, 0.9, 0.3), NOT_SUPPORTED),
    (fit(NAN, NAN, NAN, NAN), NO_DATA),
    (None, NO_DATA),
])
def test_power_law_rule(f, expect):
    assert verdict_power_law(f) == expect


def test_width_depth_rule():
    good, weak, bad = fit(0.6, 0.5, 0.7, 0.9), fit(0.6, 0.5, 0.7, 0.6), fit(0.1, -1, 1, 0.1)
    assert verdict_width_depth(good, 0.25) == SUPPORTED
    assert verdict_width_depth(weak, 0.25) == PARTLY
    assert verdict_width_depth(good, math.inf) == NOT_SUPPORTED  # never breaks: not needed
    assert verdict_width_depth(bad, 0.25) == NOT_SUPPORTED
    assert verdict_width_depth(good, NAN) == NO_DATA


def test_input_lr_rule():
    law, weak = fit(0.6, 0.5, 0.7, 0.9), fit(0.6, 0.4, 0.8, 0.55)
    lost = fit(0.05, -0.1, 0.2, 0.1)
    assert verdict_input_lr({0.001: law, 0.01: weak, 1.0: lost}) == SUPPORTED
    # a frozen input layer (s = 0) is shown, not scored
    assert verdict_input_lr({0.0: lost, 0.01: law, 1.0: lost}) == SUPPORTED
    assert verdict_input_lr({0.0: law, 1.0: lost}) == NO_DATA
    # lost at s = 1 but also weak (R^2 < 0.5) at one small factor: partly
    assert verdict_input_lr({0.001: law, 0.01: fit(0.4, 0.2, 0.5, 0.48), 1.0: lost}) == PARTLY
    # the law survives at s = 1 but its exponent leaves the small-s intervals: partly
    assert verdict_input_lr({0.01: law, 1.0: fit(0.2, 0.15, 0.25, 0.9)}) == PARTLY
    assert verdict_input_lr({0.01: law, 1.0: fit(0.62, 0.5, 0.7, 0.9)}) == NOT_SUPPORTED
    assert verdict_input_lr({0.01: lost, 1.0: lost}) == NOT_SUPPORTED
    assert verdict_input_lr({0.01: law}) == NO_DATA


def test_late_rule():
    star = fit(0.6, 0.5, 0.7, 0.9)
    flat = fit(0.0, -0.05, 0.05, 0.9)
    assert verdict_late(star, fit(1.0, 0.9, 1.1, 0.9), flat, 1.0) == SUPPORTED
    assert verdict_late(star, fit(0.65, 0.55, 0.8, 0.9), fit(0.1, 0.02, 0.2, 0.5),
                        1.0) == SUPPORTED  # same alpha interval, but the ratio has a slope
    assert verdict_late(star, fit(0.65, 0.55, 0.8, 0.9), flat, 0.3) == PARTLY
    assert verdict_late(star, fit(0.65, 0.55, 0.8, 0.9), flat, 1.2) == NOT_SUPPORTED
    assert verdict_late(None, star, flat, 1.0) == NO_DATA
    # same scaling in d w; the late rate follows 2/lambda_1 (beta ~ 1), eta* does not
    same = fit(0.65, 0.55, 0.8, 0.9)
    eos, no_eos = fit(0.95, 0.8, 1.1, 0.9), fit(0.6, 0.5, 0.7, 0.9)
    assert verdict_late(star, same, flat, 1.0, eos, no_eos, 3.0, 15.0) == SUPPORTED
    assert verdict_late(star, same, flat, 1.0, eos, fit(0.6, 0.3, 1.2, 0.6)) == SUPPORTED
    # both follow their limits but at multiples 3 and 20: partly
    assert verdict_late(star, same, flat, 1.0, eos, eos, 3.0, 20.0) == PARTLY
    assert verdict_late(star, same, flat, 1.0, eos, eos, 3.0, 5.0) == NOT_SUPPORTED
    assert verdict_late(star, same, flat, 1.0, no_eos, no_eos, 3.0, 5.0) == NOT_SUPPORTED


def test_sharpness_rules():
    assert verdict_sharpness_relation(fit(0.6, 0.5, 0.7, 0.8)) == SUPPORTED
    assert verdict_sharpness_relation(fit(0.9, 0.7, 1.1, 0.8)) == PARTLY  # inverse possible
    assert verdict_sharpness_relation(fit(0.6, 0.5, 0.7, 0.2)) == NOT_SUPPORTED
    assert verdict_sharpness_bounds(None) == NO_DATA
    dflt = fit(0.6, 0.5, 0.7, 0.5)
    assert verdict_robustness(dflt, [fit(0.55, 0.1, 0.9, 0.3), fit(0.7, 0.6, 0.8, 0.9)]) \
        == SUPPORTED  # interval bounds inclusive; R^2 does not enter
    assert verdict_robustness(dflt, [fit(0.65, 0.5, 0.7, 0.9), fit(0.9, 0.8, 1.0, 0.9)]) \
        == PARTLY
    assert verdict_robustness(dflt, [fit(0.9, 0.8, 1.0, 0.9)] * 3) == NOT_SUPPORTED
    # a fit that lost more than a third of its points is not scored
    lost = PowerLawFit(1.5, 0.0, 1.4, 1.6, 1.0, 6, 6, 0.95)
    assert verdict_robustness(dflt, [lost, fit(0.62, 0.5, 0.7, 0.9)]) == SUPPORTED
    assert verdict_robustness(dflt, [lost]) == NO_DATA
    assert verdict_robustness(None, [dflt]) == NO_DATA


def test_choice_rule_on_known_fits():
    """Robustness to one choice: inside the default's interval -> supported; outside but
    overlapping -> partly; disjoint -> not supported; lost fits are not scored."""
    dflt = fit(0.62, 0.55, 0.69, 0.9)
    assert verdict_choice(dflt, [fit(0.69, 0.6, 0.8, 0.9), fit(0.55, 0.3, 0.7, 0.5)]) \
        == SUPPORTED  # bounds inclusive
    assert verdict_choice(dflt, [fit(0.60, 0.5, 0.7, 0.9), fit(0.71, 0.65, 0.8, 0.9)]) \
        == PARTLY  # 0.71 outside [0.55, 0.69], its interval [0.65, 0.8] overlaps
    assert verdict_choice(dflt, [fit(0.60, 0.5, 0.7, 0.9), fit(0.80, 0.70, 0.9, 0.9)]) \
        == NOT_SUPPORTED  # [0.70, 0.90] is disjoint from [0.55, 0.69]
    lost = PowerLawFit(1.5, 0.0, 1.4, 1.6, 1.0, 6, 6, 0.95)
    assert verdict_choice(dflt, [lost, fit(0.6, 0.5, 0.7, 0.9)]) == SUPPORTED
    assert verdict_choice(dflt, [lost]) == NO_DATA
    assert verdict_choice(None, [dflt]) == NO_DATA
    assert verdict_choice(fit(NAN, NAN, NAN, NAN), [dflt]) == NO_DATA
    assert verdict_choices([SUPPORTED, SUPPORTED, NO_DATA]) == SUPPORTED
    assert verdict_choices([SUPPORTED, PARTLY]) == PARTLY
    assert verdict_choices([PARTLY, NOT_SUPPORTED, SUPPORTED]) == NOT_SUPPORTED
    assert verdict_choices([NO_DATA]) == NO_DATA and verdict_choices([]) == NO_DATA
    assert "robustness to each of our other choices" in RULES


def test_theta_rule_on_known_laws():
    """lambda_1 = Theta(d w): a linear law with seed noise passes, a power 0.6 (the plain
    Hessian's slope on Fashion-MNIST) leaves the factor-2 band on the larger networks."""
    from milr.scorecard import THETA_BAND, theta_dw_test

    rng = np.random.default_rng(1)
    dw = np.repeat([32.0 * 2 ** k for k in range(9)], 8)  # 32 ... 8192, 8 networks each
    noise = np.exp(0.15 * rng.standard_normal(dw.size))
    linear = theta_dw_test(dw, 0.1 * dw * noise)
    assert linear.fit_max_dw == 512 and (linear.n_fit, linear.n_test) == (40, 32)
    assert linear.c == pytest.approx(0.1, rel=0.1) and linear.n_test_inside == 32
    assert verdict_sharpness_bounds(linear) == SUPPORTED
    sub = theta_dw_test(dw, 0.1 * dw ** 0.6 * noise)
    assert sub.n_test_inside < 0.8 * sub.n_test and sub.worst_test < 1 / THETA_BAND
    assert verdict_sharpness_bounds(sub) == NOT_SUPPORTED
    assert "below" in sub.text() and "of 32 within ×2" in sub.text()
    # exactly 1 of 8 test networks out of the band: partly (7/8 >= 80 %)
    lam = 0.1 * dw
    lam[-1] *= 3
    t = theta_dw_test(dw, lam)
    assert (t.n_test_inside, t.n_test) == (31, 32) and verdict_sharpness_bounds(t) == PARTLY
    lam[-8:] *= 3  # the largest d w all three times above: 24 of 32 inside, < 80 %
    assert verdict_sharpness_bounds(theta_dw_test(dw, lam)) == NOT_SUPPORTED
    # too few d w values to split
    assert verdict_sharpness_bounds(theta_dw_test([1, 2, 2], [1, 2, 2])) == NOT_ENOUGH_DATA
    assert verdict_sharpness_bounds(theta_dw_test([1, 2, 4], [1, 2, 4])) == SUPPORTED


def test_helpers_and_rendering(tmp_path):
    assert intervals_overlap((0, 1), (1, 2)) and not intervals_overlap((0, 1), (1.1, 2))
    assert intervals_overlap((NAN, 1), (5, 6))  # unknown: no evidence of a difference
    assert fmt_fit(fit(0.614, 0.5, 0.7, 0.912, 30)) == "α = 0.61 [0.50, 0.70], R² = 0.91, n = 30"
    assert "no fit" in fmt_fit(None)
    df = pd.DataFrame({"claim": ["a | b"], "evidence": ["x\ny"], "verdict": [SUPPORTED]})
    md = to_markdown(df)
    assert md.splitlines()[0] == "| claim | evidence | verdict |"
    assert md.splitlines()[2] == "| a \\| b | x<br>y | supported |"
    fig = scorecard_figure(df)
    cell = fig.axes[0].tables[0].get_celld()[(1, 2)]
    assert cell.get_facecolor()[:3] == pytest.approx((0xa6 / 255, 0xdb / 255, 0xa0 / 255))
    assert "power law" in RULES and "R^2 >= 0.8" in RULES
    from milr.scorecard import RULES_MD
    assert "`verdict_power_law`" in RULES_MD and ":func:" not in RULES_MD
    assert "``" not in RULES_MD


# -- the evidence, from a store of synthetic records ------------------------------------------

def _put(store, task, result):
    store.put(task.kind, task.record_config(), result, {"code_version": "milr test"})


def _eta(dw, c=10.0, alpha=0.5):
    return {"eta_star": c * dw ** -alpha, "status": "converged"}


@pytest.fixture
def synthetic_store(tmp_path):
    """Smoke-preset records with known laws: eta* = 10 (dw)^-0.5 on the main grid and under
    every threshold/budget and at s = 0; flat noise at s = 1; narrow nets with d/w >= 1/2
    never reach the threshold; late rate = 2 (dw)^-1; lambda_1 = 0.5 (dw)^0.8."""
    from milr.conditions import figure_tasks, late_tasks
    from milr.presets import get_preset
    from milr.sharpness import SharpnessTask
    from milr.store import Store
    from milr.sweep import load_results
    from milr.validate import build_tasks, spec_from_preset

    store = Store(tmp_path / "results")
    p = get_preset("smoke")
    rng = np.random.default_rng(0)
    for fig in ("width_vs_depth", "input_lr", "threshold_budget", "late_lr", "choices"):
        for part, tasks in figure_tasks(p, fig).items():
            for t in tasks:
                dw, ratio = t.trial.depth * t.trial.width, t.trial.depth / t.trial.width
                res = _eta(dw)
                if part == "narrow" and ratio >= 0.5:
                    res = {"eta_star": NAN, "status": "no_success"}
                if part == "s=1":
                    res = {"eta_star": 0.5 * math.exp(0.3 * rng.standard_normal()),
                           "status": "converged"}
                _put(store, t, res)
    ref = load_results(figure_tasks(p, "late_lr")["reference"], store)
    for t in late_tasks(p, ref):
        dw = t.depth * t.width
        _put(store, t, {"eta_late": 2.0 / dw, "stability_limit_eff": 0.5 / dw,
                        "lambda_1_eff": 4.0 * dw, "status": "converged",
                        "eta_star_ref": t.eta_star_ref})
    for t in build_tasks(spec_from_preset("smoke", kind="sharpness")):
        assert isinstance(t, SharpnessTask)
        lam = 0.5 * (t.depth * t.width) ** 0.8
        _put(store, t, {"lambda_1": lam, "lambda_1_eff": lam})
    return store


def test_collect_scorecard_from_synthetic_records(synthetic_store):
    table, numbers = collect_scorecard("smoke", synthetic_store)
    assert list(table.columns) == ["claim_id", "claim", "dataset", "evidence", "verdict",
                                   "figure"]
    assert list(table.claim_id) == [c for c, _, _ in CLAIMS]  # one data set: one row each
    v = dict(zip(table.claim_id, table.verdict))
    assert v == {"1": SUPPORTED, "1 (i)": SUPPORTED, "1 (ii)": SUPPORTED, "2": SUPPORTED,
                 "3": SUPPORTED, "4": SUPPORTED, "ours": SUPPORTED,
                 "ours (choices)": SUPPORTED}
    assert numbers["1"]["gaussian"].alpha == pytest.approx(0.5, abs=1e-9)
    b = numbers["1 (i)"]["gaussian"]["breakdown"]
    assert (b.ratio, b.last_ok) == (0.5, 0.125)
    assert numbers["2"]["gaussian"]["late"].alpha == pytest.approx(1.0, abs=1e-9)
    assert numbers["2"]["gaussian"]["median_late_over_eos"] == pytest.approx(4.0)
    assert numbers["2"]["gaussian"]["late_eos"].alpha == pytest.approx(1.0, abs=1e-9)
    assert numbers["2"]["gaussian"]["early_eos"].alpha == pytest.approx(0.625, abs=1e-9)
    assert numbers["3"]["gaussian"].alpha == pytest.approx(0.5 / 0.8, abs=1e-9)
    assert numbers["4"]["gaussian"]["gamma"].alpha == pytest.approx(0.8, abs=1e-9)
    theta = numbers["4"]["gaussian"]["theta"]  # smoke d w: 16, 32 | 64
    assert theta.fit_max_dw == 32 and (theta.n_fit, theta.n_test) == (3, 1)
    assert theta.c == pytest.approx(0.5 * (16 * 32 * 32) ** (-0.2 / 3), rel=1e-12)
    assert numbers["1 (ii)"]["gaussian"][0.0].alpha == pytest.approx(0.5, abs=1e-9)
    assert "Broken from d/w = 1/2 on" in table.evidence[1]
    assert "(largest d/w before that: 1/8)" in table.evidence[1]


def test_collect_scorecard_without_records(tmp_path):
    from milr.store import Store

    table, _ = collect_scorecard("smoke", Store(tmp_path / "empty"))
    assert (table.verdict == NO_DATA).all()


def test_scorecard_notebook_writes_markdown_and_png(tmp_path, synthetic_store):
    """The scorecard notebook on the synthetic store: every verdict in the Markdown table is
    the rule's (all supported here), and the PNG exists."""
    pm = pytest.importorskip("papermill")
    from pathlib import Path

    nb = Path(__file__).resolve().parent.parent / "notebooks" / "scorecard.ipynb"
    figs = tmp_path / "figs"
    pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), kernel_name="python3",
                        cwd=str(nb.parent), progress_bar=False,
                        parameters={"smoke": True, "store_dir": str(synthetic_store.root),
                                    "figure_dir": str(figs)})
    md = (figs / "scorecard.md").read_text(encoding="utf-8")
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "verdict" not in ln]
    assert len(rows) == len(CLAIMS)
    assert all("| supported |" in ln for ln in rows)
    assert "## Rules" in md and (figs / "scorecard.png").stat().st_size > 20_000
