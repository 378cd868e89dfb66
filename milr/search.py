"""eta*: the largest learning rate at which a fresh network reaches the threshold accuracy.

One search, three phases, for every method (docs/DESIGN.md, "One search"):

1. **Scan** (our choice): with a finite step budget a too-*small* rate also fails, so the
   successful rates form an interval [eta_min, eta*], and a bisection of a wide bracket can
   fall below eta_min. The search first tries ``eta_hi, eta_hi / f, ...`` down to ``eta_lo``
   (``f = scan_factor``; ``scan="top-down"`` stops at the first success, ``"full"`` tries
   every point and so measures ``eta_min``).
2. **Expansion**: if ``eta_hi`` itself succeeds, ``eta_hi * f^j`` for j = 1..``max_expand``.
3. **Refinement** by k-section: each round trains up to ``k`` rates spread geometrically in
   [l, u] (:func:`kpoints`) and keeps [largest success, the point above it], until
   u / l <= 1 + tol. ``k = 1`` is the paper's Algorithm 1 (bisection at the geometric mean).

``SearchConfig(method="bisect")`` is Algorithm 1 run one trial at a time per seed (the
scan top-down one point at a time, the expansion one point at a time up to the first
failure, k = 1); ``method="batched"`` uses ``k = search.k`` and runs the expansion points,
and on CUDA the scan points, of a seed at once. Every seed has its own bracket and rounds;
all seeds' trials share one :class:`milr.train.Trainer`.

Non-monotone outcomes: a round is decided once every point above its largest success has
finished; points below the largest success cannot change the bracket and are cancelled
(logged with ``reason="cancelled"``, ``success=None``; not outcomes). A failure seen between
two successes sets ``non_interval``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch

from .config import SearchConfig, TrialConfig, check_int, check_seeds
from .data import Dataset
from .train import TrialResult, trainer_for

__all__ = ["EtaStarResult", "eta_star", "eta_star_on", "k_section", "kpoints", "scan_points",
           "non_interval", "STATUSES"]

log = logging.getLogger(__name__)

STATUSES = ("converged", "max_trials", "no_success", "upper_bound_succeeded")
#: Relative slack in the convergence test ``u / l <= (1 + tol)(1 + 1e-9)``, so that a bracket
#: split into exactly the planned number of parts is not refined again for a rounding error.
_REL_SLACK = 1e-9


@dataclass
class EtaStarResult:
    """Result of one eta* search (one configuration, one seed).

    eta_star: largest learning rate observed to succeed once the bracket is closed (units of
        the hidden-layer rate); NaN when no trial succeeded.
    bracket_lo, bracket_hi: final bracket [l, u]: l succeeded, u failed (u = inf if even the
        expanded upper bound succeeded; l = NaN if nothing succeeded).
    status: ``converged`` (u / l <= 1 + tol), ``max_trials`` (cap reached first),
        ``no_success`` (every scanned rate down to eta_lo failed), ``upper_bound_succeeded``
        (still succeeding after ``max_expand`` expansions).
    eta_min: smallest success of the contiguous run of successes below eta*, when a failure
        below it was seen (``scan="full"``); NaN otherwise.
    non_interval: the trial log shows a success above a failure above a success.
    n_trials: trials started (cancelled ones included); trials: the log, in the order the
        trials finished (:meth:`milr.train.TrialResult.to_dict` plus ``round``).
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
    """True if, sorted by eta, the outcomes read success ... failure ... success."""
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


def kpoints(lo: float, hi: float, tol: float, k_max: int, budget: int) -> list[float]:
    """Learning rates of one k-section round inside the bracket ``(lo, hi)``, ascending.

    With ``L = log(hi / lo) / log(1 + tol)`` the rounds still needed with ``k_max`` points
    each are ``n = ceil(log L / log(k_max + 1))``; this round uses the fewest points that
    still finish in ``n`` rounds, ``k = ceil(L^(1/n)) - 1`` (at least 1, at most ``k_max``
    and ``budget``), at ``lo * (hi / lo)^(j / (k + 1))``, j = 1..k (our choice: bisection's
    final bracket in fewer rounds, no more rates than that needs). ``[]`` if the bracket is
    already closed or ``budget < 1``.
    """
    ratio = math.log(hi / lo) / math.log1p(tol)
    if ratio <= 1 + _REL_SLACK or budget < 1:
        return []
    n = max(1, math.ceil(math.log(ratio) / math.log(k_max + 1) - _REL_SLACK))
    k = math.ceil(ratio ** (1.0 / n) - _REL_SLACK) - 1
    k = max(1, min(k, k_max, budget))
    r = hi / lo
    return [lo * r ** (j / (k + 1)) for j in range(1, k + 1)]


class _SeedSearch:
    """The search of one seed (see the module docstring) on a batch of trials."""

    def __init__(self, seed: int, search: SearchConfig, k: int, window: int | None,
                 sequential: bool):
        self.seed, self.search, self.k = seed, search, k
        self.window, self.sequential = window, sequential
        self.pending: list[float] = []  # scan/expansion points not yet started
        self.log: list[dict] = []
        self.outcomes: list[tuple[float, bool]] = []
        self.n_started = 0
        self.lo = self.hi = math.nan
        self.status: str | None = None
        self.phase = "scan"
        self.round = 0
        self.running: dict[int, float] = {}  # current round, uid -> eta
        self.points: list[float] = []  # current round's points
        self.best: float = math.nan  # largest success of the current round (or its baseline)
        self.failed_above = False  # expansion: a point failed (sequential expansion stops)
        self.background: dict[int, float] = {}  # full scan: points below the first success
        self.uid_round: dict[int, int] = {}
        self.t0 = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.status is not None and not self.running and not self.background

    def _launch(self, batch, p: float) -> None:
        uid = batch.add(p, self.seed, tag=self)
        self.running[uid] = p
        self.uid_round[uid] = self.round
        self.points.append(p)
        self.n_started += 1

    def _start_round(self, batch, points: list[float], baseline: float) -> None:
        self.round += 1
        self.points, self.best, self.running = [], baseline, {}
        for p in points:
            self._launch(batch, p)

    def start(self, batch) -> None:
        """Round one: the scan from the top (a window of points at a time when top-down)."""
        s = self.search
        pts = scan_points(s.eta_lo, s.eta_hi, s.scan_factor)[: s.max_trials]
        n = len(pts) if (s.scan == "full" or self.window is None) else self.window
        self._start_round(batch, pts[:n], math.nan)
        self.pending = pts[n:]

    def _refill(self, batch) -> None:
        """Start the next pending point: a scan point while no success was seen; an expansion
        point (sequential search) while every expansion so far succeeded."""
        if self.phase == "scan":
            while self.pending and math.isnan(self.best) and len(self.running) < self.window:
                self._launch(batch, self.pending.pop(0))
        elif self.phase == "expand" and not self.failed_above and not self.running:
            self._launch(batch, self.pending.pop(0))

    def on_result(self, uid: int, res: TrialResult, batch) -> None:
        entry = res.to_dict()
        entry["round"] = self.uid_round.get(uid, self.round)
        if res.reason == "cancelled":
            entry["success"] = None
        else:
            self.outcomes.append((res.eta, bool(res.success)))
        self.log.append(entry)
        if uid in self.background:
            del self.background[uid]
            return
        self.running.pop(uid, None)
        if res.success and not res.eta <= self.best:
            self.best = res.eta
            self._cancel_below(batch)
        elif res.reason != "cancelled" and not res.success and self.phase == "expand":
            self.failed_above = True
        if self.pending:
            self._refill(batch)

    def _cancel_below(self, batch) -> None:
        """Points below the round's largest success cannot change the bracket."""
        for uid, eta in list(self.running.items()):
            if eta < self.best:
                del self.running[uid]
                if self.phase == "scan" and self.search.scan == "full":
                    self.background[uid] = eta
                else:
                    batch.cancel(uid)

    def _decided(self) -> bool:
        if self.running and not all(eta < self.best for eta in self.running.values()):
            return False
        if self.phase == "expand" and self.pending and not self.failed_above:
            return False
        if math.isnan(self.best):
            return not self.running and not self.pending
        return True

    def update(self, batch) -> None:
        """Close the current round if it is decided and start the next one."""
        if self.status is not None or not self._decided():
            return
        s = self.search
        above = [p for p in self.points if p > self.best] if not math.isnan(self.best) else []
        self.pending = []
        if self.phase == "scan":
            if math.isnan(self.best):
                self.status = "no_success"
                return
            if self.best >= s.eta_hi:
                budget = s.max_trials - self.n_started
                pts = [s.eta_hi * s.scan_factor ** j
                       for j in range(1, min(s.max_expand, budget) + 1)]
                if not pts:
                    self.lo, self.hi = s.eta_hi, math.inf
                    self.status = ("upper_bound_succeeded" if s.max_expand == 0
                                   else "max_trials")
                    return
                self.phase = "expand"
                if self.sequential:  # Algorithm 1: one expansion at a time, to a failure
                    self._start_round(batch, pts[:1], s.eta_hi)
                    self.pending = pts[1:]
                else:
                    self._start_round(batch, pts, s.eta_hi)
                self.n_expand = len(pts)
                return
            self.lo, self.hi = self.best, min(above)
        elif self.phase == "expand":
            if not above:
                self.lo, self.hi = self.best, math.inf
                self.status = ("upper_bound_succeeded" if self.n_expand >= s.max_expand
                               else "max_trials")
                return
            self.lo, self.hi = self.best, min(above)
        else:  # refine
            self.lo, self.hi = self.best, min(above + [self.hi])
        self.phase = "refine"
        if self.hi / self.lo <= (1 + s.tol) * (1 + _REL_SLACK):
            self.status = "converged"
            return
        pts = kpoints(self.lo, self.hi, s.tol, self.k, s.max_trials - self.n_started)
        if not pts:
            self.status = "max_trials"
            return
        self._start_round(batch, pts, self.lo)

    def result(self) -> EtaStarResult:
        lo = self.lo
        return EtaStarResult(
            seed=int(self.seed), eta_star=float(lo), bracket_lo=float(lo),
            bracket_hi=float(self.hi), status=self.status,
            eta_min=_eta_min(self.outcomes, lo) if not math.isnan(lo) else math.nan,
            non_interval=non_interval(self.outcomes), n_trials=len(self.log),
            wall_time=time.perf_counter() - self.t0, trials=self.log)


def k_section(batch, search: SearchConfig, seeds: list[int], k: int,
              scan_window: int | None = None, sequential: bool = False,
              on_trial=None) -> list[EtaStarResult]:
    """Drive the searches of ``seeds`` on ``batch``; one result per seed, in order.

    ``batch`` is a :class:`milr.train.Trainer` or any object with its protocol (``add(eta,
    seed, tag=...) -> uid``, ``cancel(uid)``, ``advance() -> [(uid, result, tag)]``,
    ``idle``): the late-stage search drives late trials this way, tests a synthetic oracle.
    ``k``: rates per refinement round; ``scan_window``: top-down scan points of a seed run
    at once (``None``: all); ``sequential``: Algorithm 1's one-at-a-time expansion.
    ``on_trial(result)`` is called for every finished trial (progress bars). Arguments are
    trusted (checked by :func:`eta_star` and the configurations).
    """
    searches = [_SeedSearch(s, search, k, scan_window, sequential) for s in seeds]
    for s in searches:
        s.start(batch)

    def collect():
        for uid, res, owner in batch.advance():
            owner.on_result(uid, res, batch)
            if on_trial is not None and res.reason != "cancelled":
                on_trial(res)

    while not all(s.done for s in searches):
        if batch.idle:  # pragma: no cover (guard against a logic error looping forever)
            raise RuntimeError("search stalled: no trial running, search not done")
        collect()
        for s in searches:
            s.update(batch)
    while not batch.idle:  # collect the records of the last cancelled trials
        collect()
    return [s.result() for s in searches]


def eta_star(
    trial: TrialConfig,
    search: SearchConfig | None = None,
    seeds: Iterable[int] = (0,),
    data: Dataset | None = None,
    device: str | torch.device = "cpu",
    *,
    on_trial=None,
    stats: dict | None = None,
    max_members: int | None = None,
    scan_window: int | None = None,
    generic: bool = False,
) -> list[EtaStarResult]:
    """Estimate eta* of configuration ``trial`` for each seed (the paper's Algorithm 1 and our
    scan, see the module docstring); the one entry point of every method.

    Parameters
    ----------
    trial, search: the rules (``search`` defaults to :class:`SearchConfig()`).
    seeds: a non-empty list of distinct integers >= 0; each seed fixes the initialisation
        and data order of every trial of its search. All seeds train in one batch.
    data: the data set (loaded from ``trial.dataset`` when omitted); device: torch device.
    on_trial: called with every finished :class:`milr.train.TrialResult` (progress bars).
    stats: if a dict, receives the trainer's counters (``steps_run``, ``member_steps``,
        ``syncs``, ``flops``, ``max_members_seen``).
    max_members: cap on trials trained at once (:class:`milr.train.Trainer`).
    scan_window: ``method="batched"``, ``scan="top-down"`` only: scan points of a seed run
        at once (default: all on CUDA, where extra members are nearly free; 1 on the CPU).
        It changes the cost and the cancelled log entries, never the bracket.
    generic: train through ``torch.func`` (:class:`milr.train.StackedModule`) instead of the
        hand-written backward (``make bench`` measures both; results agree to rounding).

    Returns one :class:`EtaStarResult` per seed, in the order given. Raises ``ValueError``
    for an empty, repeating or negative seed list, or a bad ``scan_window``.
    """
    search = SearchConfig() if search is None else search
    seeds = check_seeds(seeds)
    if scan_window is not None:
        scan_window = check_int("scan_window", scan_window, 1)
    batch = trainer_for(trial, data, device, generic=generic, max_members=max_members)
    out = eta_star_on(batch, search, seeds, device, on_trial=on_trial, stats=stats,
                      scan_window=scan_window)
    for r in out:
        log.debug("eta* %s d=%d w=%d seed=%d -> %.4g (%s, %d trials)", trial.dataset,
                  trial.depth, trial.width, r.seed, r.eta_star, r.status, r.n_trials)
    return out


def eta_star_on(batch, search: SearchConfig, seeds: Iterable[int],
                device: str | torch.device = "cpu", *, on_trial=None, stats: dict | None = None,
                scan_window: int | None = None) -> list[EtaStarResult]:
    """The search of :func:`eta_star` on a ready :class:`milr.train.Trainer` ``batch`` (any
    network: :func:`eta_star` passes the MLP's, :func:`milr.custom.eta_star_for` a user's
    module's), one :class:`EtaStarResult` per seed in order.

    From ``search.method`` and ``device`` it picks what :func:`k_section` runs:
    ``"bisect"``: k = 1, one scan point at a time, sequential expansion (Algorithm 1);
    ``"batched"``: k = ``search.k``, ``scan_window`` scan points of a seed at once (default:
    all on CUDA, 1 on the CPU). ``stats`` (a dict) receives the trainer's counters
    (``steps_run``, ``member_steps``, ``syncs``, ``flops`` (NaN when the trainer does not know
    its FLOPs per step), ``max_members_seen``). Raises ``ValueError`` for a bad seed list or
    ``scan_window``.
    """
    seeds = check_seeds(seeds)
    if scan_window is not None:
        scan_window = check_int("scan_window", scan_window, 1)
    sequential = search.method == "bisect"
    if sequential:
        k, window = 1, 1
    else:
        k = search.k
        window = scan_window
        if window is None:
            window = None if torch.device(device).type == "cuda" else 1
    out = k_section(batch, search, seeds, k, window, sequential, on_trial)
    if stats is not None:
        per_step = getattr(batch, "flops_per_member_step", math.nan)
        stats.update(steps_run=batch.steps_run, member_steps=batch.member_steps,
                     syncs=batch.syncs, flops=batch.member_steps * per_step,
                     max_members_seen=batch.peak_members)
    return out
