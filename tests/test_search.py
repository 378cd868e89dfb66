"""The one eta* search: Algorithm 1 (k = 1) and k-section on synthetic success oracles with
known answers, against the readable reference bisection (tests/reference.py), and on real
trials."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from milr.config import SearchConfig, TrialConfig
from milr.search import eta_star, k_section, kpoints, non_interval, scan_points
from milr.train import TrialResult, step_flops

from reference import algorithm1, reference_bisection, reference_trial, small_cfg


def eta_star_single(success, search):
    """The library's Algorithm 1 on a function, checked against the reference bisection:
    the same rates tried (to rounding), the same bracket and status."""
    res = algorithm1(success, search)
    ref = reference_bisection(success, search)
    assert res.status == ref.status
    assert [t["eta"] for t in res.trials] == pytest.approx([t["eta"] for t in ref.trials],
                                                           rel=1e-12)
    for a, b in ((res.bracket_lo, ref.bracket_lo), (res.bracket_hi, ref.bracket_hi),
                 (res.eta_min, ref.eta_min)):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12)
    assert res.non_interval == ref.non_interval and res.n_trials == ref.n_trials
    return res


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
    cfg = TrialConfig("gaussian", depth=1, width=32, step_budget=100, eval_every=20, n_val=500,
                      threshold=0.85, input_lr_scale=0.1)
    (res,) = eta_star(cfg, SearchConfig(eta_lo=0.01, eta_hi=30, tol=0.25, scan_factor=8),
                      seeds=[0])
    assert res.status == "converged"
    by_eta = {t["eta"]: t["success"] for t in res.trials}
    assert by_eta[res.bracket_lo] is True and by_eta[res.bracket_hi] is False


def same_float(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_k_is_keyed_only_for_the_batched_method():
    assert "k" not in SearchConfig().to_dict()
    assert SearchConfig(method="batched", k=5).to_dict()["k"] == 5


# ------------------------------------------------------------------ k-section geometry
def test_kpoints_closed_form():
    pts = kpoints(1.0, 4.0, 0.1, 8, 60)
    # L = log 4 / log 1.1 = 14.5: two rounds of 8 would do, so the fewest points that still
    # finish in two rounds: k + 1 = ceil(sqrt(14.5)) = 4, i.e. k = 3, at 4^(j/4)
    assert pts == pytest.approx([4 ** 0.25, 4 ** 0.5, 4 ** 0.75], rel=1e-12)
    assert kpoints(1.0, 4.0, 0.1, 15, 60) == pytest.approx([4 ** (j / 15) for j in range(1, 15)])
    assert kpoints(1.0, 4.0, 0.1, 8, 2) == pytest.approx([4 ** (1 / 3), 4 ** (2 / 3)])
    assert kpoints(1.0, 1.1, 0.1, 8, 60) == []
    assert kpoints(1.0, 4.0, 0.1, 8, 0) == []
    assert kpoints(2.0, 8.0, 0.1, 1, 60) == pytest.approx([4.0])  # k = 1 is bisection


@given(ratio=st.floats(1.2, 1e4), tol=st.floats(0.01, 0.5), k=st.integers(1, 16))
def test_kpoints_rounds_bound(ratio, tol, k):
    # worst case (the boundary always in the top sub-interval): converges within
    # ceil(log L / log(k + 1)) rounds, never more than bisection needs
    lo, hi, rounds = 1.0, ratio, 0
    while True:
        pts = kpoints(lo, hi, tol, k, 10**6)
        if not pts:
            break
        assert len(pts) <= k and all(lo < p < hi for p in pts)
        lo, rounds = pts[-1], rounds + 1
    L = math.log(ratio) / math.log1p(tol)
    assert hi / lo <= (1 + tol) * (1 + 1e-9)
    bound = max(0, math.ceil(math.log(L) / math.log(k + 1) - 1e-9)) if L > 1 else 0
    assert rounds <= bound
    assert rounds <= max(0, math.ceil(math.log2(L) - 1e-9)) if L > 1 else rounds == 0


# ------------------------------------------------------------------ search on an oracle batch
class OracleBatch:
    """The batch protocol with synthetic trials: success iff ``success(eta)``.

    Durations (steps): failures above the success set diverge fast (``fast`` steps),
    successes take ``slow``, failures below run the budget ``budget`` (what SGD does).
    """

    def __init__(self, success, boundary, fast=3, slow=100, budget=400):
        self.success, self.boundary = success, boundary
        self.fast, self.slow, self.budget = fast, slow, budget
        self.now, self.uid = 0, 0
        self.running = {}  # uid -> (eta, seed, tag, end)
        self.cancelled = []
        self.started = []

    def add(self, eta, seed, tag=None):
        ok = self.success(eta)
        dur = self.slow if ok else (self.fast if eta > self.boundary else self.budget)
        self.uid += 1
        self.running[self.uid] = (eta, seed, tag, self.now + dur, self.now)
        self.started.append(eta)
        return self.uid

    def cancel(self, uid):
        if uid in self.running:
            self.cancelled.append(uid)
            return True
        return False

    @property
    def idle(self):
        return not self.running

    def _res(self, eta, ok, reason, steps):
        return TrialResult(eta, ok, reason, steps, math.nan, math.nan, 2.3, 0.0)

    def advance(self):
        out = []
        for uid in self.cancelled:
            eta, seed, tag, end, start = self.running.pop(uid)
            out.append((uid, self._res(eta, False, "cancelled", self.now - start), tag))
        self.cancelled = []
        if not self.running:
            return out
        self.now = min(v[3] for v in self.running.values())
        for uid, (eta, seed, tag, end, start) in list(self.running.items()):
            if end == self.now:
                del self.running[uid]
                ok = self.success(eta)
                reason = "reached_threshold" if ok else (
                    "diverged_blowup" if eta > self.boundary else "budget_exhausted")
                out.append((uid, self._res(eta, ok, reason, end - start), tag))
        return out


def run_oracle(success, boundary, search, k=3, window=None, seeds=(0,)):
    batch = OracleBatch(success, boundary)
    return k_section(batch, search, list(seeds), k, window), batch


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log_b=st.floats(math.log(2e-3), math.log(25.0)), width=st.floats(0.0, 8.0),
       k=st.integers(1, 9), window=st.sampled_from([1, 2, None]),
       scan=st.sampled_from(["top-down", "full"]), tol=st.sampled_from([0.1, 0.03]))
def test_oracle_interval_matches_bisection(log_b, width, k, window, scan, tol):
    b = math.exp(log_b)
    a = b * math.exp(-width)  # successes form [a, b] (DESIGN.md: an interval, not a half-line)
    ok = lambda e: a <= e <= b  # noqa: E731
    search = SearchConfig(tol=tol, scan=scan, method="batched")
    (res,), batch = run_oracle(ok, b, search, k, window)
    seq = reference_bisection(ok, search)
    assert res.status == seq.status
    if seq.status == "no_success":
        assert math.isnan(res.eta_star)
        return
    assert res.status == "converged"
    assert res.bracket_lo <= b < res.bracket_hi <= res.bracket_lo * (1 + tol) * (1 + 1e-9)
    # both brackets hold b and are at most 1 + tol wide: one final bracket step apart at most
    assert abs(math.log(res.eta_star / seq.eta_star)) < math.log1p(tol) * (1 + 1e-6)
    assert not res.non_interval
    assert res.n_trials == len(res.trials) == len(batch.started)
    if scan == "full":
        assert same_float(res.eta_min, seq.eta_min)
    cancelled = [t for t in res.trials if t["reason"] == "cancelled"]
    assert all(t["success"] is None for t in cancelled)


@pytest.mark.parametrize("b", [0.05, 0.9, 3.3, 20.0])
def test_scan_window_changes_cost_not_result(b):
    ok = lambda e: 1e-3 <= e <= b  # noqa: E731
    search = SearchConfig(method="batched")
    outs = {}
    for window in (1, 2, None):
        (res,), batch = run_oracle(ok, b, search, 3, window)
        outs[window] = (res, len(batch.started))
    keys = {w: (r.eta_star, r.bracket_lo, r.bracket_hi, r.status) for w, (r, _) in outs.items()}
    assert keys[1] == keys[2] == keys[None]
    assert outs[1][1] <= outs[2][1] <= outs[None][1]  # narrower window, fewer trials started


def test_oracle_upper_bound_and_expansion():
    search = SearchConfig(method="batched", eta_hi=30.0, scan_factor=4.0, max_expand=2)
    (res,), _ = run_oracle(lambda e: e <= 1e9, 1e9, search)
    assert res.status == "upper_bound_succeeded"
    assert res.eta_star == pytest.approx(30.0 * 16) and math.isinf(res.bracket_hi)
    (res,), _ = run_oracle(lambda e: e <= 200.0, 200.0, search)  # between 120 and 480
    assert res.status == "converged" and res.bracket_lo <= 200.0 < res.bracket_hi
    seq = reference_bisection(lambda e: e <= 200.0, search)
    assert abs(math.log(res.eta_star / seq.eta_star)) < math.log1p(search.tol)


def test_oracle_non_interval_is_flagged_and_largest_success_kept():
    # success for eta <= 4 except a hole (2.5, 3.0): scan brackets [1.875, 7.5], the k = 3
    # round tries 2.65 (fails, in the hole), 3.75 (succeeds), 5.30 (fails)
    ok = lambda e: e <= 4.0 and not 2.5 < e < 3.0  # noqa: E731
    search = SearchConfig(method="batched", eta_lo=1e-3, eta_hi=30.0, scan_factor=4.0)
    # the hole's failure diverges fast (before 3.75 succeeds): seen, flagged
    res = k_section(OracleBatch(ok, 2.5), search, [0], 3)[0]
    assert res.non_interval
    assert 3.75 <= res.bracket_lo <= 4.0 < res.bracket_hi
    # it fails slowly (budget): 3.75 succeeds first, 2.65 is cancelled, never seen
    res = k_section(OracleBatch(ok, 4.0), search, [0], 3)[0]
    assert not res.non_interval
    assert 3.75 <= res.bracket_lo <= 4.0 < res.bracket_hi
    assert [t["reason"] for t in res.trials if t["eta"] == pytest.approx(4 ** 0.25 * 1.875)] \
        == ["cancelled"]
    # a full scan that sees a failure between two successes flags it too
    ok2 = lambda e: 1.0 <= e <= 2.0 or e <= 0.2  # noqa: E731
    full = SearchConfig(method="batched", scan="full")
    (res2,), _ = run_oracle(ok2, 2.0, full, k=3)
    assert res2.non_interval and res2.bracket_lo <= 2.0 < res2.bracket_hi


def test_oracle_eta_min_with_full_scan():
    ok = lambda e: 0.2 <= e <= 3.0  # noqa: E731
    search = SearchConfig(method="batched", scan="full")
    (res,), _ = run_oracle(ok, 3.0, search)
    # scan points 30, 7.5, 1.875, 0.469, 0.117, ...: the lowest success of the run is 0.469
    assert res.eta_min == pytest.approx(30 / 4 ** 3)
    (top,), _ = run_oracle(ok, 3.0, SearchConfig(method="batched"), window=None)
    assert math.isnan(top.eta_min)  # top-down cancels the points below the first success


def test_oracle_no_success_and_max_trials():
    (res,), _ = run_oracle(lambda e: False, 0.0, SearchConfig(method="batched"))
    assert res.status == "no_success" and math.isnan(res.eta_star)
    capped = SearchConfig(method="batched", max_trials=6, tol=0.001)
    (res,), _ = run_oracle(lambda e: e <= 3.3, 3.3, capped)
    assert res.status == "max_trials" and res.n_trials <= 6
    assert res.bracket_lo <= 3.3 < res.bracket_hi


def test_oracle_seeds_run_independently():
    # seed-dependent boundaries in one batch: each seed gets its own bracket
    bounds = {0: 0.7, 1: 2.2, 2: 9.0}
    batch = OracleBatch(lambda e: True, 0.0)
    seeds_of = {}
    add = batch.add

    def add_seeded(eta, seed, tag=None):
        uid = add(eta, seed, tag)
        seeds_of[uid] = seed
        return uid

    batch.add = add_seeded
    batch.success = lambda e: True  # replaced per trial below
    orig_advance = batch.advance

    def advance():
        out = []
        for uid, r, tag in orig_advance():
            b = bounds[seeds_of[uid]]
            if r.reason != "cancelled":
                r.success = r.eta <= b
                r.reason = "reached_threshold" if r.success else "diverged_blowup"
            out.append((uid, r, tag))
        return out

    batch.advance = advance
    res = k_section(batch, SearchConfig(method="batched"), [0, 1, 2], 3)
    for r in res:
        b = bounds[r.seed]
        assert r.status == "converged" and r.bracket_lo <= b < r.bracket_hi


# ------------------------------------------------------------------ real searches
def test_batched_search_agrees_with_bisection_float64(gauss):
    cfg = small_cfg(dtype="float64")
    search = SearchConfig(eta_lo=1e-2, eta_hi=30.0, tol=0.25, scan_factor=4.0)
    seeds = [0, 1, 2]
    seq = eta_star(cfg, search, seeds=seeds, data=gauss)
    bat = eta_star(cfg, SearchConfig(**{**search.to_dict(), "method": "batched", "k": 3}),
                   seeds=seeds, data=gauss)
    compared = 0
    for a, b in zip(seq, bat):
        assert a.status == b.status == "converged"
        assert b.n_trials == len(b.trials) > 0
        assert {"eta", "success", "reason", "steps", "round"} <= set(b.trials[0])
        # the bracket is what independent run_trial calls say: l succeeds, u fails
        assert reference_trial(cfg, b.bracket_lo, b.seed, gauss).success
        assert not reference_trial(cfg, b.bracket_hi, b.seed, gauss).success
        assert b.bracket_hi / b.bracket_lo <= (1 + search.tol) * (1 + 1e-9)
        # where the outcomes both searches saw form an interval, the two eta* are at most one
        # final bracket step apart; near eta* success need not be monotone (seed 0 here:
        # 3.75 and 4.46 succeed, 4.05 fails), and then each search keeps its own largest
        # success below its first failure
        both = [(t["eta"], t["success"]) for t in a.trials + b.trials
                if t["success"] is not None]
        if not non_interval(both):
            compared += 1
            assert abs(math.log(a.eta_star / b.eta_star)) < math.log1p(search.tol) * (1 + 1e-9)
    assert compared >= 1, compared


def test_eta_star_batched_stats(gauss):
    cfg = small_cfg()
    stats = {}
    (r,) = eta_star(cfg, SearchConfig(eta_lo=1e-2, tol=0.5, scan_factor=8.0,
                                      method="batched"), [0], data=gauss, stats=stats)
    assert stats["member_steps"] >= stats["steps_run"] > 0
    assert stats["flops"] == stats["member_steps"] * step_flops(cfg, 100, 2)
    assert sum(t["steps"] for t in r.trials) <= stats["member_steps"]


