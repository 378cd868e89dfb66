"""The maximal learning rate *later* in training, for the paper's contrast with eta*.

The paper (Iyer, Hanin & Rolnick 2023, Sec. 1 and 6) says that eta*, the maximal *initial*
learning rate, behaves differently from the maximal learning rate later in training. The
paper's protocol for "later" is not recoverable, so everything here is **our documented
choice**:

1. **Warm-up.** The network of a (data set, depth, width, seed) is initialised exactly as the
   eta* trials initialise it (:func:`milr.models.make_mlp`) and trained with the trials' rules
   (plain SGD, cross-entropy, batch size, input layer at ``input_lr_scale x eta``) for
   ``warmup_steps`` steps at a small constant rate ``warmup_lr``. The task builder
   (:func:`late_lr_tasks`) sets ``warmup_lr = warmup_fraction x eta*`` (default 0.1 x the
   median eta* over the seeds of that configuration, rounded to 3 significant digits, so
   that every network is equally far below its own initial limit).
2. **Trial.** From a copy of that trained state, ``trial_steps`` more SGD steps at rate eta
   (input layer at ``input_lr_scale x eta``), on the minibatches that follow the warm-up's in
   the seed's data stream (:func:`milr.train.batch_indices`), so every trial of a seed sees
   the same data.
3. **Success** ("training continues without diverging or losing accuracy"): no loss or
   parameter became non-finite, no batch loss exceeded ``blowup_factor`` x the trial's first
   batch loss (the eta* trials' divergence rule), and the validation accuracy *averaged over
   the trial's last* ``window`` *evaluations* (every ``eval_every`` steps; default 4 x 25 =
   the last 100 of 200 steps) is at least the accuracy averaged over the warm-up's last
   ``window`` evaluations minus ``delta`` (default 0.02). Averages, not snapshots: one
   accuracy snapshot of an SGD iterate on the 1000-image subset moves by about +/-0.02 from
   one evaluation to the next (binomial noise alone is 0.013 near 0.8), so a snapshot rule
   flagged rates that train perfectly well (measured in the first version of this figure).
   A spike that recovers before the window counts as success, as it does for eta*.
4. **Search.** The eta* search (:func:`milr.search.k_section` as Algorithm 1: geometric
   scan from ``eta_hi`` down, then bisection between the largest success and the first
   failure above it, to ``u / l <= 1 + tol``) on these trials. Its result, ``eta_late``, is
   the largest rate observed to succeed.
5. **Sharpness at that point.** lambda_1 of the training loss at the warmed-up parameters, on
   the fixed sharpness subset (:func:`milr.sharpness.sharpness_subset`), as the *effective*
   sharpness ``lambda_max(P^1/2 H P^1/2)`` with P the per-layer rate multipliers: gradient
   descent at rate eta is stable on the local quadratic iff ``eta < 2 / lambda_1_eff`` (the
   edge-of-stability relation of Cohen et al. 2021 that the late-stage rate is compared with).

Warm-up and trials run on the one trainer (:class:`milr.train.Trainer`): an MLP with the
cross-entropy on its hand-written backward, any other model (a ``layers`` list groups its
parameters) and loss through ``torch.func``, so the tests check the search on a linear
regression whose stability limit 2 / lambda_1 is exact.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import (SearchConfig, check_bias, check_blowup_factor, check_dataset, check_float,
                     check_grid, check_int, check_readout_gain, check_split_rows,
                     drop_network_defaults, network_options)
from .data import CHANCE_ACCURACY, Dataset, load_dataset
from .models import MLP, layer_lr_scales, make_mlp
from .search import EtaStarResult, k_section
from .sharpness import sharpness, sharpness_subset
from .train import (StackedMLP, StackedModule, StopRules, Trainer, batch_indices,
                    correct_fraction, torch_dtype, val_subset)

__all__ = ["LateTrialResult", "late_trial", "late_max_lr", "warm_up", "WarmUpResult",
           "LateLRTask", "late_lr_tasks", "round_sig", "KIND", "REASONS"]

log = logging.getLogger(__name__)

KIND = "late_lr"
REASONS = ("kept_accuracy", "lost_accuracy", "diverged_nonfinite", "diverged_blowup")
DTYPES = ("float32", "float64")


def round_sig(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant digits (so configuration keys do not depend on
    the last bits of a measured rate). ``ValueError`` for a non-finite or non-positive x."""
    x = check_float("x", x, 0.0, lo_open=True)
    digits = check_int("digits", digits, 1, 15)
    return float(f"{x:.{digits - 1}e}")


def _trainer(model, x_train, y_train, order, x_val, y_val, lr_scales, blowup_factor,
             eval_every, loss_fn, score_fn, **options) -> Trainer:
    """A :class:`milr.train.Trainer` whose members start from ``model``'s state and see the
    minibatches ``order``; evaluation every ``eval_every`` steps (None: the last only)."""
    if order.ndim != 2 or order.shape[0] < 1:
        raise ValueError(f"order must be a (steps, B) index tensor with steps >= 1, got "
                         f"shape {tuple(order.shape)}")
    layers = list(model.layers)
    if len(lr_scales) != len(layers):
        raise ValueError(f"lr_scales has {len(lr_scales)} entries; the model has "
                         f"{len(layers)} layers")
    steps = int(order.shape[0])
    every = steps if eval_every is None else check_int("eval_every", eval_every, 1)
    if isinstance(model, MLP) and loss_fn is F.cross_entropy:
        net = StackedMLP([model.n0] + [model.width] * model.depth + [model.n_classes],
                         train_input=float(lr_scales[0]) > 0, bias=model.has_bias,
                         readout_gain=model.readout_gain)
    else:
        net = StackedModule(model, loss_fn)
    p0 = next(model.parameters())
    tr = Trainer(net, x_train, y_train, x_val, y_val,
                 StopRules(steps, every, None, blowup_factor), lr_scales, score=score_fn,
                 dtype=p0.dtype, device=p0.device, **options)
    tr.add_stream("order", order)
    return tr


class _FromState:
    """The batch protocol of :func:`milr.search.k_section` for trials that all start from one
    state and see one stream (``add(eta, seed, tag)`` ignores the seed); ``outcome(result)``
    turns each finished trainer result into what the search sees."""

    def __init__(self, trainer: Trainer, init: list, outcome: Callable):
        self.trainer, self.init, self.outcome = trainer, init, outcome

    def add(self, eta, seed=None, tag=None):
        return self.trainer.add(eta, init=self.init, stream="order", tag=tag)

    def cancel(self, uid):
        return self.trainer.cancel(uid)

    def advance(self):
        return [(u, r if r.reason == "cancelled" else self.outcome(r), tag)
                for u, r, tag in self.trainer.advance()]

    @property
    def idle(self):
        return self.trainer.idle


@dataclass
class LateTrialResult:
    """Outcome of one late-stage trial (``trial_steps`` SGD steps from a trained state).

    eta: learning rate of the trial (layer ``l`` at ``lr_scales[l] * eta``).
    success: no divergence and ``score_end >= score_start - delta``.
    reason: ``kept_accuracy`` (success), ``lost_accuracy``, ``diverged_nonfinite`` (a loss,
        parameter or validation output became NaN or +/-inf) or ``diverged_blowup`` (a batch
        loss exceeded ``blowup_factor`` x the trial's first batch loss).
    steps: steps taken (the step at which divergence was detected, else all of them).
    score_start: the reference score (accuracy for classification); score_end: the mean
        score over the trial's last ``window`` evaluations (NaN when the trial diverged).
    loss_first, loss_max: first and largest batch loss of the trial.
    wall_time: seconds.
    """

    eta: float
    success: bool
    reason: str
    steps: int
    score_start: float
    score_end: float
    loss_first: float
    loss_max: float
    wall_time: float

    def to_dict(self) -> dict:
        return asdict(self)


def _late_result(r, score_start: float, delta: float, window: int) -> LateTrialResult:
    """A late trial's outcome from the trainer's result (``budget_exhausted`` = ran to the
    end: then the window mean decides)."""
    reason, score_end = r.reason, math.nan
    if reason == "budget_exhausted":
        score_end = float(np.mean([a for _, a in r.curve[-window:]]))
        ok = math.isfinite(score_end) and score_end >= score_start - delta
        reason = "kept_accuracy" if ok else "lost_accuracy"
    return LateTrialResult(
        eta=float(r.eta), success=reason == "kept_accuracy", reason=reason, steps=int(r.steps),
        score_start=float(score_start), score_end=float(score_end),
        loss_first=float(r.loss0), loss_max=float(r.loss_max), wall_time=float(r.wall_time))


def _check_late(eta, delta, blowup_factor, order, eval_every, window):
    check_float("eta", eta, 0.0, lo_open=True)
    check_float("delta", delta, 0.0)
    check_blowup_factor(blowup_factor)
    if order.ndim != 2 or order.shape[0] < 1:
        raise ValueError(f"order must be a (steps, B) index tensor with steps >= 1, got "
                         f"shape {tuple(order.shape)}")
    check_int("window", window, 1, len(_eval_steps(int(order.shape[0]), eval_every)))


def _score_of(model, x_val, y_val, score_fn) -> float:
    """One snapshot of ``model``'s validation score."""
    with torch.no_grad():
        return float(score_fn(model(x_val).unsqueeze(0), y_val)[0])


def late_trial(
    model,
    eta: float,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    order: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    lr_scales: Sequence[float],
    delta: float = 0.02,
    blowup_factor: float | None = 100.0,
    score_start: float | None = None,
    loss_fn: Callable = F.cross_entropy,
    score_fn: Callable = correct_fraction,
    eval_every: int | None = None,
    window: int = 1,
) -> LateTrialResult:
    """Train a *copy* of ``model`` for ``len(order)`` SGD steps at rate ``eta``; did it keep
    training without diverging or losing more than ``delta`` of its validation score?

    Parameters
    ----------
    model: a network with a ``layers`` list (e.g. :class:`milr.models.MLP`); never modified.
    eta: learning rate, finite and > 0; layer ``l`` trains at ``lr_scales[l] * eta``.
    x_train ``(N, n0)``, y_train ``(N,)``: training data; order ``(steps, B)`` int64: the
        row indices of each step's minibatch.
    x_val, y_val: the validation data the score is measured on.
    lr_scales: one multiplier per entry of ``model.layers``.
    delta: allowed loss of score, >= 0 (default 0.02 of accuracy; our choice, see the module
        docstring).
    blowup_factor: divergence when a batch loss exceeds this x the trial's first batch loss
        (> 1; default 100, the eta* trials' rule; None: no blow-up rule).
    score_start: the reference score (default: one snapshot of ``model``'s score; the task
        passes the warm-up's window mean).
    loss_fn: ``loss_fn(outputs, y) -> scalar`` (default mean cross-entropy).
    score_fn: ``score_fn(outputs (m, n, ...), y) -> (m,)`` tensor, higher is better (default
        accuracy, a row with a non-finite output counting as wrong; tests use minus the loss
        of a regression).
    eval_every: the score is measured every ``eval_every`` steps and after the last step
        (``None``: after the last step only).
    window: ``score_end`` is the mean of the last ``window`` measurements (>= 1 and at most
        the number of measurements).

    Raises ``ValueError`` for a bad ``eta``, ``delta``, ``blowup_factor``, ``order``,
    ``lr_scales``, ``eval_every`` or ``window``. Source: our definition of "continues
    training" (module docstring).
    """
    _check_late(eta, delta, blowup_factor, order, eval_every, window)
    tr = _trainer(model, x_train, y_train, order, x_val, y_val, lr_scales, blowup_factor,
                  eval_every, loss_fn, score_fn, record_curve=True)
    if score_start is None:
        score_start = _score_of(model, x_val, y_val, score_fn)
    uid = tr.add(float(eta), init=model, stream="order")
    return _late_result(tr.run()[uid], score_start, delta, window)


def _eval_steps(steps: int, eval_every: int | None) -> set:
    """Steps (1-based) after which the score is measured: every ``eval_every`` and the last."""
    if eval_every is None:
        return {steps}
    eval_every = check_int("eval_every", eval_every, 1)
    return set(range(eval_every, steps + 1, eval_every)) | {steps}


def late_max_lr(
    model,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    order: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    search: SearchConfig | None = None,
    *,
    lr_scales: Sequence[float],
    delta: float = 0.02,
    blowup_factor: float | None = 100.0,
    loss_fn: Callable = F.cross_entropy,
    score_fn: Callable = correct_fraction,
    seed: int = 0,
    score_start: float | None = None,
    eval_every: int | None = None,
    window: int = 1,
) -> EtaStarResult:
    """The largest rate at which training continues from ``model``'s current state: the eta*
    search as Algorithm 1 (:func:`milr.search.k_section`, k = 1, one trial at a time) on
    :func:`late_trial`'s trials (same arguments).

    Every trial starts from the same state and sees the same minibatches ``order``, so the
    result depends on eta only. Returns a :class:`milr.search.EtaStarResult` whose
    ``eta_star`` is the late-stage maximal rate (NaN and status ``no_success`` when even
    ``search.eta_lo`` fails) and whose ``trials`` log holds each :class:`LateTrialResult`
    (plus its ``round``). ``score_start``: the reference score of every trial (default one
    snapshot of ``model``'s). ``seed`` is only recorded. Raises ``ValueError`` like
    :func:`late_trial`.
    """
    search = SearchConfig() if search is None else search
    _check_late(search.eta_hi, delta, blowup_factor, order, eval_every, window)
    score0 = (_score_of(model, x_val, y_val, score_fn) if score_start is None
              else float(score_start))
    tr = _trainer(model, x_train, y_train, order, x_val, y_val, lr_scales, blowup_factor,
                  eval_every, loss_fn, score_fn, record_curve=True)
    batch = _FromState(tr, tr.net.of_model(model),
                       lambda r: _late_result(r, score0, delta, window))
    (res,) = k_section(batch, search, [int(seed)], 1, 1, sequential=True)
    return res


@dataclass
class WarmUpResult:
    """State after the warm-up (see :func:`warm_up`).

    diverged: the warm-up itself diverged (non-finite loss, parameter or validation output,
        or a batch loss above ``blowup_factor`` x the first one). val_acc, val_loss: accuracy
        and mean cross-entropy on the validation subset after the last step. val_acc_window:
        mean accuracy over the last ``window`` evaluations (the late trials' reference).
        train_loss_last: mean of the last ``min(50, steps)`` finite batch losses. steps:
        steps taken. wall_time: seconds.
    """

    diverged: bool
    val_acc: float
    val_acc_window: float
    val_loss: float
    train_loss_last: float
    steps: int
    wall_time: float

    def to_dict(self) -> dict:
        return asdict(self)


def warm_up(model, lr: float, x_train, y_train, order, x_val, y_val, *,
            lr_scales: Sequence[float], blowup_factor: float | None = 100.0,
            eval_every: int | None = None, window: int = 1) -> WarmUpResult:
    """Train ``model`` *in place* with plain SGD at constant rate ``lr`` (layer ``l`` at
    ``lr_scales[l] * lr``) on the minibatches ``order`` ``(steps, B)``, cross-entropy loss,
    on the one trainer; validation accuracy every ``eval_every`` steps and after the last
    (``None``: the last only), averaged over the last ``window`` of them into
    ``val_acc_window``.

    Stops early (``diverged=True``) by the trainer's rules (non-finite loss, parameter or
    validation output; a batch loss above ``blowup_factor`` x the first one). Raises
    ``ValueError`` for a bad ``lr``, ``order``, ``eval_every`` or ``window``.
    """
    lr = check_float("lr", lr, 0.0, lo_open=True)
    if order.ndim != 2 or order.shape[0] < 1:
        raise ValueError(f"order must be a (steps, B) index tensor, got {tuple(order.shape)}")
    window = check_int("window", window, 1, len(_eval_steps(int(order.shape[0]), eval_every)))
    t0 = time.perf_counter()
    tr = _trainer(model, x_train, y_train, order, x_val, y_val, lr_scales, blowup_factor,
                  eval_every, F.cross_entropy, correct_fraction, record_curve=True,
                  record_losses=True, keep_params=True)
    uid = tr.add(lr, init=model, stream="order")
    r = tr.run()[uid]
    with torch.no_grad():
        for p, q in zip(model.parameters(), r.params):
            p.copy_(q)
    diverged = r.reason.startswith("diverged")
    acc = vloss = acc_w = math.nan
    if not diverged:
        with torch.no_grad():
            vloss = float(F.cross_entropy(model(x_val), y_val))
        acc = r.final_acc
        acc_w = float(np.mean([a for _, a in r.curve[-window:]]))
    tail = [v for v in r.losses[-50:] if math.isfinite(v)]
    return WarmUpResult(diverged, float(acc), acc_w, float(vloss),
                        float(np.mean(tail)) if tail else math.nan, int(r.steps),
                        time.perf_counter() - t0)


@dataclass(frozen=True)
class LateLRTask:
    """One late-stage maximal-learning-rate search (one configuration, one seed); sweep task
    of kind ``"late_lr"`` (:mod:`milr.sweep` protocol).

    dataset, depth, width, seed: the network, initialised as the eta* trials do.
    warmup_lr: constant rate of the warm-up (> 0; the builder uses 0.1 x eta*).
    warmup_steps: SGD steps of the warm-up (default 400, the quick preset's trial budget).
    trial_steps: SGD steps of each late trial (default 200).
    delta: allowed loss of validation accuracy in a trial (default 0.02).
    eval_every, window: validation accuracy every ``eval_every`` steps (default 25, the
        trials' period); the warm-up's reference and a trial's end score are the means of
        their last ``window`` evaluations (default 4, i.e. the last 100 steps).
    batch_size, n_val, input_lr_scale, blowup_factor, dtype, readout_gain, bias: as in
        :class:`milr.config.TrialConfig` (defaults: the quick preset's; readout_gain and bias
        are left out of the record's configuration at their defaults, so earlier records
        keep their keys).
    n_subset, sharpness_tol: subset size and Lanczos tolerance of lambda_1 at the warmed-up
        state (:func:`milr.sharpness.sharpness`; defaults 1000 and 1e-4).
    plain_sharpness: also compute the plain lambda_1 (all layers at multiplier 1).
    search: the bracketing search's rules (:class:`milr.config.SearchConfig`; it always runs
        sequentially: ``method`` is set to ``"bisect"``).
    eta_star_ref, warmup_fraction: where ``warmup_lr`` came from (copied into the result;
        not part of the record's key, which ``warmup_lr`` already fixes).
    """

    dataset: str
    depth: int
    width: int
    seed: int
    warmup_lr: float
    warmup_steps: int = 400
    trial_steps: int = 200
    delta: float = 0.02
    eval_every: int = 25
    window: int = 4
    batch_size: int = 64
    n_val: int = 1000
    input_lr_scale: float = 0.01
    blowup_factor: float | None = 100.0
    dtype: str = "float32"
    readout_gain: float = 1.0
    bias: bool = True
    n_subset: int = 1000
    sharpness_tol: float = 1e-4
    plain_sharpness: bool = False
    search: SearchConfig = field(default_factory=SearchConfig)
    eta_star_ref: float | None = None
    warmup_fraction: float | None = None
    kind = KIND

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        check_dataset(self.dataset)
        for name, lo in (("depth", 1), ("width", 1), ("seed", 0), ("warmup_steps", 1),
                         ("trial_steps", 1), ("batch_size", 1), ("eval_every", 1),
                         ("window", 1)):
            set_(name, check_int(name, getattr(self, name), lo))
        set_("n_val", check_split_rows("n_val", self.n_val, self.dataset, "val"))
        set_("n_subset", check_split_rows("n_subset", self.n_subset, self.dataset, "train"))
        for phase in ("warmup_steps", "trial_steps"):
            n_evals = len(_eval_steps(getattr(self, phase), self.eval_every))
            if self.window > n_evals:
                raise ValueError(f"window={self.window} must be at most the {n_evals} "
                                 f"evaluations of {phase}={getattr(self, phase)} at "
                                 f"eval_every={self.eval_every}")
        set_("warmup_lr", check_float("warmup_lr", self.warmup_lr, 0.0, lo_open=True))
        set_("delta", check_float("delta", self.delta, 0.0, 1.0))
        set_("input_lr_scale", check_float("input_lr_scale", self.input_lr_scale, 0.0, 1.0))
        set_("blowup_factor", check_blowup_factor(self.blowup_factor))
        set_("readout_gain", check_readout_gain(self.readout_gain))
        set_("bias", check_bias(self.bias))
        set_("sharpness_tol", check_float("sharpness_tol", self.sharpness_tol, 0.0, 1.0,
                                          lo_open=True, hi_open=True))
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} must be one of {DTYPES}")
        if not isinstance(self.plain_sharpness, bool):
            raise TypeError(f"plain_sharpness={self.plain_sharpness!r} must be True or False")
        search = self.search
        if isinstance(search, dict):
            search = SearchConfig(**search)
        if not isinstance(search, SearchConfig):
            raise TypeError(f"search={search!r} must be a SearchConfig or a dict of its fields")
        if search.method != "bisect":
            search = SearchConfig(**{**search.to_dict(), "method": "bisect"})
        set_("search", search)
        for name in ("eta_star_ref", "warmup_fraction"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                set_(name, check_float(name, v, 0.0, lo_open=True))

    def record_config(self) -> dict:
        """Flat JSON configuration that keys the record (seed included; ``eta_star_ref`` and
        ``warmup_fraction`` left out: ``warmup_lr`` fixes the computation)."""
        d = drop_network_defaults(asdict(self))
        for k in ("search", "eta_star_ref", "warmup_fraction"):
            d.pop(k)
        d.update({f"search_{k}": v for k, v in self.search.to_dict().items()})
        d["loss"] = "mean_cross_entropy"
        d["criterion"] = ("no divergence and mean val_acc of the trial's last window evals "
                          ">= mean of the warm-up's last window evals - delta")
        return d

    def lr_scales(self) -> list[float]:
        return layer_lr_scales(self.depth, self.input_lr_scale)

    def prepare(self, data: Dataset | None = None, device: str | torch.device = "cpu"):
        """Build and warm up the network. Returns ``(model, warm, tensors)``: the trained
        model, its :class:`WarmUpResult` and a dict of the tensors the trials use
        (``x_train``, ``y_train``, ``order`` (trial_steps, B), ``x_val``, ``y_val``)."""
        data = load_dataset(self.dataset) if data is None else data
        dt = torch_dtype(self.dtype)
        xtr = data.x_train.to(device=device, dtype=dt)
        ytr = data.y_train.to(device=device)
        xv, yv = val_subset(data, self.n_val)
        xv, yv = xv.to(device=device, dtype=dt), yv.to(device=device)
        order = batch_indices(len(ytr), self.batch_size, self.warmup_steps + self.trial_steps,
                              self.seed).to(device)
        model = make_mlp(data.input_dim, self.width, self.depth, data.n_classes, self.seed,
                         dt, device, **network_options(self))
        warm = warm_up(model, self.warmup_lr, xtr, ytr, order[: self.warmup_steps], xv, yv,
                       lr_scales=self.lr_scales(), blowup_factor=self.blowup_factor,
                       eval_every=self.eval_every, window=self.window)
        tensors = {"x_train": xtr, "y_train": ytr, "order": order[self.warmup_steps:],
                   "x_val": xv, "y_val": yv}
        return model, warm, tensors

    def compute(self, device: str | torch.device = "cpu") -> dict:
        """Warm up, search the late-stage maximal rate, measure lambda_1 at the warmed-up
        state. Result fields: ``eta_late`` (NaN if the warm-up diverged or nothing
        succeeded), ``bracket_lo``, ``bracket_hi``, ``status`` (the search's, or
        ``warmup_diverged``), ``non_interval``, ``n_trials``; ``warmup_*`` (accuracy, losses,
        wall time); ``lambda_1_eff`` (and ``lambda_1`` with ``plain_sharpness``) with
        residual, HVP count and convergence; ``stability_limit_eff = 2 / lambda_1_eff``;
        ``eta_star_ref``, ``warmup_fraction``; ``trials`` (the search's log)."""
        t0 = time.perf_counter()
        data = load_dataset(self.dataset)
        model, warm, tt = self.prepare(data, device)
        out: dict = {"eta_star_ref": self.eta_star_ref, "warmup_fraction": self.warmup_fraction,
                     "chance": CHANCE_ACCURACY[self.dataset]}
        out.update({f"warmup_{k}": v for k, v in warm.to_dict().items()})
        if warm.diverged:
            out.update(eta_late=math.nan, bracket_lo=math.nan, bracket_hi=math.nan,
                       status="warmup_diverged", non_interval=False, n_trials=0, trials=[],
                       lambda_1_eff=math.nan, stability_limit_eff=math.nan,
                       wall_time=time.perf_counter() - t0)
            return out
        res = late_max_lr(model, tt["x_train"], tt["y_train"], tt["order"], tt["x_val"],
                          tt["y_val"], self.search, lr_scales=self.lr_scales(),
                          delta=self.delta, blowup_factor=self.blowup_factor, seed=self.seed,
                          score_start=warm.val_acc_window, eval_every=self.eval_every,
                          window=self.window)
        out.update(eta_late=res.eta_star, bracket_lo=res.bracket_lo, bracket_hi=res.bracket_hi,
                   status=res.status, non_interval=res.non_interval, n_trials=res.n_trials,
                   search_wall_time=res.wall_time, trials=res.trials)
        x, y = sharpness_subset(data, self.n_subset)
        jobs = [("lambda_1_eff", self.lr_scales())]
        if self.plain_sharpness:
            jobs.append(("lambda_1", None))
        for name, sc in jobs:
            r = sharpness(model, x, y, part="hessian", lr_scales=sc, tol=self.sharpness_tol,
                          dtype=torch.float64, device=device)
            out[name] = r.eigenvalue
            out[f"{name}_residual"] = r.residual_norm
            out[f"{name}_n_hvp"] = r.n_hvp
            out[f"{name}_converged"] = r.converged
            out[f"{name}_wall_time"] = r.wall_time
        lam = out["lambda_1_eff"]
        out["stability_limit_eff"] = 2.0 / lam if lam > 0 else math.nan
        out["wall_time"] = time.perf_counter() - t0
        return out


def late_lr_tasks(
    datasets: Iterable[str],
    depths: Iterable[int],
    widths: Iterable[int],
    seeds: Iterable[int],
    eta_star_ref: Mapping[tuple, float],
    warmup_fraction: float = 0.1,
    search: dict | SearchConfig | None = None,
    min_width_over_depth: float = 1.0,
    **options,
) -> list[LateLRTask]:
    """All late-stage tasks of a grid (data sets x depths x widths x seeds).

    ``eta_star_ref[(dataset, depth, width)]`` is the configuration's eta* (e.g. the median
    over seeds from the eta* store); the warm-up rate is ``round_sig(warmup_fraction x
    eta*, 3)``. A configuration whose eta* is missing, NaN or <= 0 (no rate reached the
    threshold) is left out, since it has no reference rate. Networks with ``width <
    min_width_over_depth x depth`` are left out (the eta* grids' rule). ``options`` are other
    :class:`LateLRTask` fields. Raises ``ValueError``/``TypeError`` naming the first bad
    parameter; nothing is computed.
    """
    frac = check_float("warmup_fraction", warmup_fraction, 0.0, 1.0, lo_open=True)
    mwd = check_float("min_width_over_depth", min_width_over_depth, 0.0)
    datasets, depths, widths, seeds = check_grid(datasets, depths, widths, seeds)
    allowed = set(LateLRTask.__dataclass_fields__) - {
        "dataset", "depth", "width", "seed", "warmup_lr", "eta_star_ref", "warmup_fraction",
        "search"}
    bad = set(options) - allowed
    if bad:
        raise ValueError(f"unknown option(s) {sorted(bad)}; allowed: {sorted(allowed)}")
    if search is None:
        search_cfg = SearchConfig()
    elif isinstance(search, SearchConfig):
        search_cfg = search
    else:
        search_cfg = SearchConfig(**{k: v for k, v in dict(search).items()})
    tasks = []
    for ds in datasets:
        for d in depths:
            for w in widths:
                if w < mwd * d:
                    continue
                ref = eta_star_ref.get((ds, d, w))
                if ref is None or not math.isfinite(float(ref)) or float(ref) <= 0:
                    continue
                lr = round_sig(frac * float(ref), 3)
                tasks.extend(LateLRTask(ds, d, w, s, lr, search=search_cfg,
                                        eta_star_ref=float(ref), warmup_fraction=frac,
                                        **options) for s in seeds)
    return tasks
