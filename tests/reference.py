"""Readable reference implementations the library is checked against (test oracles only).

* :func:`reference_trial`: one eta* trial as a plain ``torch.optim.SGD`` loop over an
  ``nn.Module`` (autograd backward), with the trial rules written out once more. The one
  trainer (:class:`milr.train.Trainer`) must follow it (float64: identical outcomes).
* :func:`reference_bisection`: the paper's Algorithm 1 with our scan, one trial at a time,
  as a plain loop. The one search (:func:`milr.search.k_section`) must agree with it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from milr.config import SearchConfig, TrialConfig
from milr.data import Dataset
from milr.models import make_mlp, param_groups
from milr.search import EtaStarResult, k_section, non_interval, scan_points
from milr.train import TrialResult, batch_indices, torch_dtype, val_subset


@torch.no_grad()
def _accuracy(model, x, y) -> tuple[float, bool]:
    """(accuracy, all logits finite); a row with a non-finite logit is wrong."""
    out = model(x)
    finite_rows = torch.isfinite(out).all(1)
    acc = ((out.argmax(1) == y) & finite_rows).double().mean().item()
    return acc, bool(finite_rows.all())


def reference_trial(cfg: TrialConfig, eta: float, seed: int, data: Dataset,
                    record_curve: bool = False, model=None) -> TrialResult:
    """One trial by ``torch.optim.SGD`` (``model``, if given, is trained in place); the network
    has ``cfg.bias`` and ``cfg.readout_gain``, and ``cfg.blowup_factor=None`` leaves only
    the non-finite rules."""
    dtype = torch_dtype(cfg.dtype)
    xtr, ytr = data.x_train.to(dtype), data.y_train
    xv, yv = val_subset(data, cfg.n_val)
    xv = xv.to(dtype)
    if model is None:
        model = make_mlp(data.input_dim, cfg.width, cfg.depth, data.n_classes, seed, dtype,
                         bias=cfg.bias, readout_gain=cfg.readout_gain)
    opt = torch.optim.SGD(param_groups(model, eta, cfg.input_lr_scale), lr=eta, momentum=0.0)
    order = batch_indices(len(ytr), cfg.batch_size, cfg.step_budget, seed)
    loss0 = best = final = math.nan
    curve = []
    reason, steps = "budget_exhausted", cfg.step_budget
    for step in range(1, cfg.step_budget + 1):
        idx = order[step - 1]
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        lv = loss.item()
        if step == 1:
            loss0 = lv
        if not math.isfinite(lv):
            reason, steps = "diverged_nonfinite", step
            break
        if cfg.blowup_factor is not None and lv > cfg.blowup_factor * loss0:
            reason, steps = "diverged_blowup", step
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.step_budget:
            params_ok = all(bool(torch.isfinite(p).all()) for p in model.parameters())
            if not params_ok:
                reason, steps = "diverged_nonfinite", step
                break
            final, logits_ok = _accuracy(model, xv, yv)
            best = final if math.isnan(best) else max(best, final)
            if record_curve:
                curve.append((step, final))
            if not logits_ok:
                reason, steps = "diverged_nonfinite", step
                break
            if final >= cfg.threshold:
                reason, steps = "reached_threshold", step
                break
    return TrialResult(eta=float(eta), success=reason == "reached_threshold", reason=reason,
                       steps=steps, best_acc=float(best), final_acc=float(final),
                       loss0=float(loss0), wall_time=0.0, curve=curve)


def reference_bisection(trial, search: SearchConfig, seed: int = 0) -> EtaStarResult:
    """Scan then bisect, one trial at a time; ``trial(eta)`` returns a bool or an object
    with ``success``."""
    log, outcomes = [], []

    def run(eta):
        r = trial(eta)
        ok = bool(r) if isinstance(r, (bool, np.bool_)) else bool(r.success)
        log.append({"eta": float(eta), "success": ok})
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
            if run(p) and math.isnan(lo):
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
    eta_min = math.nan
    if not math.isnan(lo):
        run_lo = math.nan
        for e, s in sorted(((e, s) for e, s in outcomes if e <= lo), reverse=True):
            if not s:
                eta_min = run_lo
                break
            run_lo = e
    return EtaStarResult(seed=seed, eta_star=float(lo), bracket_lo=float(lo),
                         bracket_hi=float(hi), status=status, eta_min=eta_min,
                         non_interval=non_interval(outcomes), n_trials=len(log),
                         wall_time=0.0, trials=log)


class FunctionBatch:
    """The batch protocol of :func:`milr.search.k_section` over a plain function
    ``success(eta) -> bool``: every trial finishes at the next ``advance``."""

    def __init__(self, success):
        self.success, self.uid, self.pending, self.started = success, 0, {}, []

    def add(self, eta, seed=None, tag=None):
        self.uid += 1
        self.pending[self.uid] = (eta, tag)
        self.started.append(eta)
        return self.uid

    def cancel(self, uid):
        return self.pending.pop(uid, None) is not None

    @property
    def idle(self):
        return not self.pending

    def advance(self):
        out = []
        for uid, (eta, tag) in list(self.pending.items()):
            ok = bool(self.success(eta))
            out.append((uid, TrialResult(eta, ok, "reached_threshold" if ok else
                                         "diverged_blowup", 1, math.nan, math.nan, 2.3, 0.0),
                        tag))
        self.pending = {}
        return out


def algorithm1(success, search: SearchConfig) -> EtaStarResult:
    """The library's search as Algorithm 1 (k = 1, one trial at a time) on a function."""
    return k_section(FunctionBatch(success), search, [0], 1, 1, sequential=True)[0]


def dense_hessian(model, x, y) -> np.ndarray:
    """torch.autograd.functional.hessian of the mean cross-entropy in the flat parameters."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            params[n] = theta[i:i + k].view(s)
            i += k
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat, vectorize=True).numpy()


def small_cfg(**kw) -> TrialConfig:
    """A small Gaussian configuration whose trials end in every way within 40 steps."""
    base = dict(dataset="gaussian", depth=2, width=16, threshold=0.85, batch_size=64,
                step_budget=40, eval_every=10, n_val=200, input_lr_scale=0.1)
    base.update(kw)
    return TrialConfig(**base)
