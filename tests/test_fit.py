"""Power-law fit on synthetic data with a known exponent."""
import math
import warnings

import numpy as np
import pytest

from milr.fit import PowerLawFit, fit_power_law


def test_recovers_known_alpha_from_noisy_points():
    rng = np.random.default_rng(1)
    x = np.repeat(np.geomspace(32, 8192, 9), 3)
    alpha, c = 0.8, 40.0
    y = c * x ** -alpha * np.exp(0.1 * rng.standard_normal(x.size))
    f = fit_power_law(x, y, n_boot=500)
    assert f.alpha == pytest.approx(alpha, abs=0.05)
    assert f.c == pytest.approx(c, rel=0.3)
    assert f.alpha_lo < alpha < f.alpha_hi
    assert f.alpha_hi - f.alpha_lo < 0.2
    assert f.r2 > 0.95 and f.n_used == x.size and f.n_dropped == 0


def test_exact_power_law_closed_form():
    x = np.array([1.0, 10.0, 100.0])
    f = fit_power_law(x, 3.0 * x ** -1.5, n_boot=50)
    assert f.alpha == pytest.approx(1.5, abs=1e-12)
    assert f.log_c == pytest.approx(math.log(3.0), abs=1e-12)
    assert f.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(f.predict([1000.0]), 3.0 * 1000.0 ** -1.5)


def test_bad_points_dropped_and_reported_not_crash():
    x = np.array([10, 20, 40, 80, 0, -1, 160, np.nan])
    y = np.array([1.0, 0.5, 0.25, np.nan, 1.0, 1.0, 0.0625, 1.0])
    with pytest.warns(RuntimeWarning, match="dropped 4"):
        f = fit_power_law(x, y, n_boot=100)
    assert f.n_dropped == 4 and f.n_used == 4
    assert f.alpha == pytest.approx(1.0, abs=1e-9)


def test_too_few_points_gives_nan_not_error():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = fit_power_law([1.0, np.nan], [1.0, 2.0])
        assert math.isnan(f.alpha) and f.n_used == 1
        assert math.isnan(fit_power_law([2.0, 2.0], [1.0, 3.0]).alpha)


@pytest.mark.parametrize("x, y, why", [
    ([1.0, np.nan], [1.0, 2.0], "1 usable point, need at least 2"),
    ([], [], "0 usable points, need at least 2"),
    ([-1.0, 0.0, 3.0], [1.0, 1.0, 1.0], "1 usable point, need at least 2"),
    ([2.0, 2.0, 2.0], [1.0, 3.0, 5.0], "all 3 usable x are equal (2)"),
])
def test_nothing_to_fit_warns_and_says_why(x, y, why):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = fit_power_law(x, y)
    assert any("nothing to fit" in str(w.message) and why in str(w.message) for w in caught)
    assert f.empty and f.empty_reason == why
    assert all(math.isnan(v) for v in (f.alpha, f.log_c, f.alpha_lo, f.alpha_hi, f.r2))
    assert f.label() == f"\u03b1: not enough data ({why})"  # shown, never as a number
    assert f.to_dict()["empty_reason"] == why


def test_a_real_fit_is_not_empty():
    f = fit_power_law([1.0, 2.0], [1.0, 0.5], n_boot=0)
    assert not f.empty and f.empty_reason == "" and f.alpha == pytest.approx(1.0)


def test_fit_input_errors():
    with pytest.raises(ValueError, match="same length"):
        fit_power_law([1, 2], [1])
    with pytest.raises(ValueError, match="ci"):
        fit_power_law([1, 2], [1, 2], ci=1.5)


def test_label_quotes_the_bootstrap_interval_as_it_is():
    f = PowerLawFit(alpha=0.536, log_c=0.0, alpha_lo=0.459, alpha_hi=0.607, r2=0.659, n_used=68,
                    n_dropped=4, ci=0.95)
    assert f.label() == "\u03b1 = 0.54 [0.46, 0.61] (95% CI), R\u00b2 = 0.66"
    g = PowerLawFit(0.5, 0.0, math.nan, math.nan, 1.0, 2, 0, 0.95)  # < 3 points: no interval
    assert g.label("\u03b2") == "\u03b2 = 0.50, R\u00b2 = 1.00"


def test_scorecard_reads_an_empty_fit_as_not_enough_data():
    from milr import scorecard as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        empty = fit_power_law([64.0], [0.5])  # one configuration: nothing to fit
        flat = fit_power_law([64.0, 64.0, 64.0], [0.5, 0.4, 0.6])
    good = PowerLawFit(0.6, 0.0, 0.5, 0.7, 0.9, 20, 0, 0.95)
    for f in (empty, flat):
        assert sc.verdict_power_law(f) == sc.NOT_ENOUGH_DATA
        assert sc.verdict_sharpness_bounds(sc.theta_dw_test([64.0], [0.5])) == sc.NOT_ENOUGH_DATA
        assert sc.verdict_sharpness_relation(f) == sc.NOT_ENOUGH_DATA
        assert sc.verdict_width_depth(f, 0.25) == sc.NOT_ENOUGH_DATA
        assert sc.verdict_late(f, good, None, 1.0) == sc.NOT_ENOUGH_DATA
        assert sc.verdict_robustness(f, [good]) == sc.NOT_ENOUGH_DATA
        assert sc.verdict_input_lr({0.01: f, 1.0: f}) == sc.NOT_ENOUGH_DATA
        text = sc.fmt_fit(f)
        assert text.startswith("α: not enough data (") and "nan" not in text.lower()
    assert sc.NOT_ENOUGH_DATA in sc.VERDICTS and sc.verdict_power_law(None) == sc.NO_DATA
    assert sc.verdict_sharpness_bounds(None) == sc.NO_DATA
