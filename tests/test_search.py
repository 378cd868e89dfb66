"""eta* search on synthetic success oracles with known answers."""
import math

import pytest

from milr.config import SearchConfig
from milr.search import eta_star_single, non_interval, scan_points


def oracle(lo=0.0, hi=0.37):
    calls = []

    def f(eta):
        calls.append(eta)
        return lo <= eta <= hi

    f.calls = calls
    return f


@pytest.mark.parametrize("boundary", [0.0123, 0.37, 2.5, 29.0])
@pytest.mark.parametrize("tol", [0.1, 0.01])
def test_monotone_oracle_boundary_within_tol(boundary, tol):
    res = eta_star_single(oracle(0.0, boundary), SearchConfig(tol=tol))
    assert res.status == "converged"
    assert res.bracket_lo <= boundary < res.bracket_hi
    assert res.bracket_hi / res.bracket_lo <= 1 + tol
    assert res.eta_star == res.bracket_lo
    assert res.n_trials == len(res.trials)


def test_success_interval_trap_is_handled():
    # DESIGN.md's trap: successes form [0.5, 3.6]; plain bisection of [1e-3, 30] tries 0.17
    # first, fails, and would return the lower bound. The scan must find the interval.
    res = eta_star_single(oracle(0.5, 3.6), SearchConfig(eta_lo=1e-3, eta_hi=30, tol=0.05))
    assert res.status == "converged"
    assert res.bracket_lo <= 3.6 < res.bracket_hi <= 3.6 * 1.05 / 1 + 1e-9


def test_full_scan_reports_eta_min_and_non_interval():
    res = eta_star_single(oracle(0.5, 3.6), SearchConfig(scan="full", scan_factor=2.0))
    assert res.bracket_lo <= 3.6 < res.bracket_hi
    # scan points 30/2^k: the smallest success of the run is 30/2^5 = 0.9375 (next 0.46875 fails)
    assert res.eta_min == pytest.approx(30 / 2 ** 5)
    assert not res.non_interval

    def holes(eta):  # success at [0.01, 0.1] and [1, 5]: not an interval
        return 0.01 <= eta <= 0.1 or 1 <= eta <= 5

    res2 = eta_star_single(holes, SearchConfig(scan="full", scan_factor=2.0))
    assert res2.non_interval
    assert res2.bracket_lo <= 5 < res2.bracket_hi


def test_bracket_expands_when_upper_bound_succeeds():
    res = eta_star_single(oracle(0.0, 500.0), SearchConfig(eta_hi=30, scan_factor=4, tol=0.1))
    assert res.status == "converged"
    assert res.bracket_lo <= 500 < res.bracket_hi


def test_upper_bound_still_succeeding_is_reported():
    res = eta_star_single(oracle(0.0, 1e9), SearchConfig(eta_hi=30, max_expand=2))
    assert res.status == "upper_bound_succeeded"
    assert res.eta_star == 30 * 16 and math.isinf(res.bracket_hi)


def test_lower_bound_failing_is_reported_clearly():
    res = eta_star_single(oracle(0.0, 1e-6), SearchConfig(eta_lo=1e-3))
    assert res.status == "no_success"
    assert math.isnan(res.eta_star)
    assert min(t["eta"] for t in res.trials) == pytest.approx(1e-3)


def test_max_trials_caps_the_search():
    res = eta_star_single(oracle(0.0, 0.37), SearchConfig(tol=1e-6, max_trials=8))
    assert res.status == "max_trials" and res.n_trials == 8
    assert res.bracket_lo <= 0.37 < res.bracket_hi


def test_scan_points_and_non_interval_helpers():
    assert scan_points(1.0, 64.0, 4.0) == [64.0, 16.0, 4.0, 1.0]
    assert scan_points(1.0, 50.0, 4.0)[-1] == 1.0
    assert non_interval([(1, True), (2, False), (3, True)])
    assert not non_interval([(1, False), (2, True), (3, True), (4, False)])


@pytest.mark.parametrize(
    "kw,name",
    [({"eta_lo": 0.0}, "eta_lo"), ({"eta_lo": 5.0, "eta_hi": 1.0}, "eta_hi"),
     ({"tol": 0.0}, "tol"), ({"scan_factor": 1.0}, "scan_factor"), ({"scan": "up"}, "scan"),
     ({"method": "magic"}, "method")],
)
def test_bad_search_config_names_parameter(kw, name):
    with pytest.raises((ValueError, TypeError), match=name):
        SearchConfig(**kw)


def test_real_search_on_gaussian_brackets_a_real_transition():
    from milr.config import TrialConfig
    from milr.search import eta_star

    cfg = TrialConfig("gaussian", depth=1, width=32, step_budget=100, eval_every=20, n_val=500,
                      threshold=0.85, input_lr_scale=0.1)
    (res,) = eta_star(cfg, SearchConfig(eta_lo=0.01, eta_hi=30, tol=0.25, scan_factor=8),
                      seeds=[0])
    assert res.status == "converged"
    by_eta = {t["eta"]: t["success"] for t in res.trials}
    assert by_eta[res.bracket_lo] is True and by_eta[res.bracket_hi] is False
