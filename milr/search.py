"""eta*: the largest learning rate at which a fresh network reaches the threshold accuracy.

The paper's Algorithm 1 bisects a bracket [l, u]: train at the midpoint m; success -> l = m,
failure -> u = m. With a finite step budget a too-*small* rate also fails (too slow), so the
successful rates form an interval [eta_min, eta*], not a half-line, and a bisection started
from a wide bracket can fall below eta_min and return nonsense (measured on Fashion-MNIST: at
depth 1, width 64 a log-bisection of [1e-3, 30] fails at its first midpoint 0.17 while
eta = 3.6 succeeds). We therefore (our choice) first scan the bracket geometrically to find a
success, then bisect between the largest success and the first failure above it.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np

from .config import SearchConfig, TrialConfig, check_int
from .data import Dataset

__all__ = ["EtaStarResult", "eta_star", "eta_star_single", "scan_points", "non_interval"]

STATUSES = ("converged", "max_trials", "no_success", "upper_bound_succeeded")


@dataclass
class EtaStarResult:
    """Result of one eta* search (one configuration, one seed).

    eta_star: largest learning rate observed to succeed once the bracket is closed (units of
        the hidden-layer learning rate); NaN when no trial succeeded.
    bracket_lo, bracket_hi: final bracket [l, u]: l succeeded, u failed (u = inf if even the
        expanded upper bound succeeded; l = NaN if nothing succeeded).
    status: ``converged`` (u / l <= 1 + tol), ``max_trials`` (cap reached first),
        ``no_success`` (every scanned rate down to eta_lo failed: the lower bound fails too),
        ``upper_bound_succeeded`` (still succeeding after ``max_expand`` expansions).
    eta_min: smallest successful rate of the contiguous run of successes below eta*, when the
        scan saw a failure below it (``scan="full"``); NaN otherwise.
    non_interval: the trial log shows a success above a failure above a success.
    trials: the full trial log, in the order run (dicts of :class:`milr.train.TrialResult`).
    """

    seed: int
    eta_star: float
    bracket_lo: float
    bracket_hi: float
    status: str
    eta_min: float
    non_interval: bool
    n_trials: int
    wall_time: float
    trials: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def scan_points(eta_lo: float, eta_hi: float, factor: float) -> list[float]:
    """Geometric scan from ``eta_hi`` down by ``factor``; the last point is ``eta_lo``."""
    pts = [eta_hi]
    while pts[-1] / factor > eta_lo * (1 + 1e-12):
        pts.append(pts[-1] / factor)
    if pts[-1] > eta_lo:
        pts.append(eta_lo)
    return pts


def non_interval(outcomes: Iterable[tuple[float, bool]]) -> bool:
    """True if sorted by eta the outcomes read success ... failure ... success."""
    seq = [s for _, s in sorted(outcomes)]
    first_success = next((i for i, s in enumerate(seq) if s), None)
    if first_success is None:
        return False
    rest = seq[first_success:]
    first_fail = next((i for i, s in enumerate(rest) if not s), None)
    return first_fail is not None and any(rest[first_fail:])


def _eta_min(outcomes: list[tuple[float, bool]], eta_star: float) -> float:
    """Lowest success of the contiguous success run ending at eta_star, if a failure bounds it."""
    below = sorted((e, s) for e, s in outcomes if e <= eta_star)
    run_lo = math.nan
    for e, s in reversed(below):
        if not s:
            return run_lo
        run_lo = e
    return math.nan


def eta_star_single(
    trial: Callable[[float], object],
    search: SearchConfig,
    seed: int = 0,
) -> EtaStarResult:
    """Run the scan-then-bisect search with a trial function (one seed).

    Parameters
    ----------
    trial: ``trial(eta) -> result`` where ``result`` has a boolean ``success`` attribute (a
        :class:`milr.train.TrialResult`, or anything alike, e.g. a synthetic oracle in tests)
        or is a plain ``bool``.
    search: the search rules (:class:`milr.config.SearchConfig`).
    seed: recorded in the result.

    Algorithm (paper's Algorithm 1 plus our scan, see module docstring):
    1. try u = eta_hi; if it succeeds, multiply u by ``scan_factor`` until a failure (at most
       ``max_expand`` times);
    2. otherwise scan down by ``scan_factor`` to eta_lo (stop at the first success for
       ``scan="top-down"``; try every point for ``"full"``);
    3. bisect [largest success, first failure above it] at the geometric midpoint until
       u / l <= 1 + tol or ``max_trials`` trials have run.
    """
    t0 = time.perf_counter()
    log: list[dict] = []
    outcomes: list[tuple[float, bool]] = []

    def run(eta: float) -> bool:
        r = trial(eta)
        ok = bool(r) if isinstance(r, (bool, np.bool_)) else bool(r.success)
        entry = r.to_dict() if hasattr(r, "to_dict") else {"eta": eta, "success": ok}
        entry["eta"] = float(eta)
        log.append(entry)
        outcomes.append((float(eta), ok))
        return ok

    lo = hi = math.nan
    status = None
    if run(search.eta_hi):
        lo, hi = search.eta_hi, math.inf
        for _ in range(search.max_expand):
            cand = lo * search.scan_factor
            if run(cand):
                lo = cand
            else:
                hi = cand
                break
        if math.isinf(hi):
            status = "upper_bound_succeeded"
    else:
        pts = scan_points(search.eta_lo, search.eta_hi, search.scan_factor)
        prev = pts[0]
        for p in pts[1:]:
            if len(log) >= search.max_trials:
                break
            ok = run(p)
            if ok and math.isnan(lo):
                lo, hi = p, prev
                if search.scan == "top-down":
                    break
            prev = p
        if math.isnan(lo):
            status = "no_success"
    if status is None:
        while hi / lo > 1 + search.tol and len(log) < search.max_trials:
            m = math.sqrt(lo * hi)
            if run(m):
                lo = m
            else:
                hi = m
        status = "converged" if hi / lo <= 1 + search.tol else "max_trials"
    return EtaStarResult(
        seed=int(seed),
        eta_star=float(lo),
        bracket_lo=float(lo),
        bracket_hi=float(hi),
        status=status,
        eta_min=_eta_min(outcomes, lo) if not math.isnan(lo) else math.nan,
        non_interval=non_interval(outcomes),
        n_trials=len(log),
        wall_time=time.perf_counter() - t0,
        trials=log,
    )


def eta_star(
    cfg: TrialConfig,
    search: SearchConfig | None = None,
    seeds: Iterable[int] = (0,),
    data: Dataset | None = None,
    device: str = "cpu",
) -> list[EtaStarResult]:
    """Estimate eta* of configuration ``cfg`` for each seed (paper's Algorithm 1, Sec. 3).

    Parameters
    ----------
    cfg: trial rules (data set, depth, width, threshold, budget, ...).
    search: search rules (defaults: :class:`SearchConfig()`); ``method="batched"`` dispatches
        to :mod:`milr.batched` when that module is available.
    seeds: integers >= 0; each seed fixes the initialisation and data order of every trial of
        its search, so each seed has its own eta*.
    data: the data set (loaded from ``cfg.dataset`` when omitted).
    device: torch device.

    Returns one :class:`EtaStarResult` per seed, in the order given.

    Raises ``ValueError`` for a negative seed (configurations validate themselves).
    """
    from .data import load_dataset
    from .train import run_trial

    search = SearchConfig() if search is None else search
    seeds = [check_int("seed", s, 0) for s in seeds]
    data = load_dataset(cfg.dataset) if data is None else data
    if search.method == "batched":
        from .batched import eta_star_batched  # noqa: WPS433 (optional fast path)

        return eta_star_batched(cfg, search, seeds, data=data, device=device)
    return [
        eta_star_single(lambda eta, s=s: run_trial(cfg, eta, s, data=data, device=device),
                        search, seed=s)
        for s in seeds
    ]
