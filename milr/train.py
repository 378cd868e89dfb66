"""One trial: plain SGD at a constant learning rate from a fresh, seeded initialisation."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .config import TrialConfig, check_float, check_int
from .data import Dataset, load_dataset
from .models import MLP, make_mlp, param_groups

__all__ = ["TrialResult", "run_trial", "batch_indices", "val_subset", "torch_dtype"]

log = logging.getLogger(__name__)

REASONS = ("reached_threshold", "diverged_nonfinite", "diverged_blowup", "budget_exhausted")


@dataclass
class TrialResult:
    """Outcome of one trial.

    eta: the learning rate (hidden and read-out layers; the input layer used
        ``input_lr_scale * eta``).
    success: validation accuracy reached the threshold within the step budget.
    reason: one of ``reached_threshold``, ``diverged_nonfinite`` (a loss or parameter became
        NaN or +/-inf), ``diverged_blowup`` (loss > blowup_factor x initial loss),
        ``budget_exhausted``.
    steps: SGD steps taken (the step at which success or divergence was detected).
    best_acc, final_acc: best and last measured validation accuracy (NaN if never measured).
    loss0: the first batch's loss at initialisation.
    wall_time: seconds.
    curve: optional list of ``(step, val_acc)`` pairs.
    """

    eta: float
    success: bool
    reason: str
    steps: int
    best_acc: float
    final_acc: float
    loss0: float
    wall_time: float
    curve: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["curve"]:
            d.pop("curve")
        return d


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """Minibatch indices, ``(steps, batch_size)`` int64, for a trial with this ``seed``.

    Concatenated random permutations of ``range(n)`` (one per epoch) cut into consecutive
    batches; a batch may straddle two epochs. Drawn on the CPU from a generator seeded with
    ``seed + 7919`` (a different stream from the initialisation), so every trial of a seed sees
    the same data order whatever its learning rate or device (our choice).
    """
    g = torch.Generator().manual_seed(int(seed) + 7919)
    need = steps * batch_size
    perms = [torch.randperm(n, generator=g) for _ in range(math.ceil(need / n))]
    return torch.cat(perms)[:need].view(steps, batch_size)


def val_subset(data: Dataset, n_val: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed validation subset: first ``n_val`` of a seed-0 permutation of the split.
    ``ValueError`` if the split has fewer rows (never a silently smaller subset: ``n_val``
    keys the record)."""
    n = len(data.y_val)
    if n_val > n:
        raise ValueError(f"n_val={n_val} must be an integer in [1, {n}]: {data.name} has {n} "
                         "validation rows")
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:n_val]
    return data.x_val[idx], data.y_val[idx]


@torch.no_grad()
@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows of ``x`` (n, n0) whose arg-max logit equals ``y`` (n,)."""
    return (model(x).argmax(dim=1) == y).double().mean().item()


def params_finite(model: torch.nn.Module) -> bool:
    """Every parameter of ``model`` is finite (no NaN, no +/-inf)."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def run_trial(
    cfg: TrialConfig,
    eta: float,
    seed: int,
    data: Dataset | None = None,
    device: str | torch.device = "cpu",
    record_curve: bool = False,
    model: MLP | None = None,
) -> TrialResult:
    """Train one freshly initialised network with plain SGD at learning rate ``eta``.

    Method (our choices, each a field of ``cfg``): cross-entropy loss, SGD without momentum or
    weight decay, batch size ``cfg.batch_size``, input layer at ``cfg.input_lr_scale * eta``,
    validation accuracy on the fixed ``cfg.n_val`` subset every ``cfg.eval_every`` steps and
    after the last step. Success as soon as accuracy >= ``cfg.threshold`` (paper, Sec. 3);
    failure on a non-finite loss or parameter, on loss > ``cfg.blowup_factor`` x initial loss,
    or when ``cfg.step_budget`` steps pass without success.

    Parameters
    ----------
    eta: learning rate, finite and > 0.
    seed: integer >= 0; fixes the initialisation and the minibatch order.
    data: the data set (loaded by name from ``cfg.dataset`` if omitted).
    device: torch device for the run.
    model: optional pre-built network to train (tests use it); fresh from ``seed`` otherwise.

    Raises ``ValueError`` for ``eta <= 0``/non-finite or a negative seed.
    """
    eta = check_float("eta", eta, 0.0, lo_open=True)
    seed = check_int("seed", seed, 0)
    t0 = time.perf_counter()
    dtype = torch_dtype(cfg.dtype)
    data = load_dataset(cfg.dataset) if data is None else data
    xtr = data.x_train.to(device=device, dtype=dtype)
    ytr = data.y_train.to(device=device)
    xv, yv = val_subset(data, cfg.n_val)
    xv, yv = xv.to(device=device, dtype=dtype), yv.to(device=device)
    if model is None:
        model = make_mlp(data.input_dim, cfg.width, cfg.depth, data.n_classes, seed, dtype, device)
    opt = torch.optim.SGD(param_groups(model, eta, cfg.input_lr_scale), lr=eta, momentum=0.0)
    order = batch_indices(len(ytr), cfg.batch_size, cfg.step_budget, seed).to(device)

    loss0 = math.nan
    best = final = math.nan
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
        if lv > cfg.blowup_factor * loss0:
            reason, steps = "diverged_blowup", step
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.step_budget:
            if not params_finite(model):
                reason, steps = "diverged_nonfinite", step
                break
            final = accuracy(model, xv, yv)
            best = final if math.isnan(best) else max(best, final)
            if record_curve:
                curve.append((step, final))
            if final >= cfg.threshold:
                reason, steps = "reached_threshold", step
                break
    res = TrialResult(
        eta=float(eta),
        success=reason == "reached_threshold",
        reason=reason,
        steps=int(steps),
        best_acc=float(best),
        final_acc=float(final),
        loss0=float(loss0),
        wall_time=time.perf_counter() - t0,
        curve=curve,
    )
    log.debug("trial %s d=%d w=%d seed=%d eta=%.4g -> %s at step %d (acc %.3f)",
              cfg.dataset, cfg.depth, cfg.width, seed, eta, reason, steps, best)
    return res
