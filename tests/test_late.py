"""Late-stage maximal learning rate (milr.late): exact stability limits of a linear
regression, the warm-up against the eta* trainer, and a small real task end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from milr.config import SearchConfig, TrialConfig
from milr.late import (LateLRTask, late_lr_tasks, late_max_lr, late_trial, round_sig,
                       warm_up)
from milr.models import make_mlp
from milr.sweep import run_sweep, task_key
from milr.store import Store
from milr.train import batch_indices

from reference import reference_trial


class TwoBlockRegression(nn.Module):
    """f(x) = x[:, :k] . a + x[:, k:] . b, with ``layers = [a, b]`` (two learning-rate groups).

    With the loss 0.5 mean (f - y)^2 the Hessian is X^T X / N exactly, so gradient descent with
    per-block multipliers P is stable iff eta < 2 / lambda_max(P^1/2 H P^1/2)."""

    def __init__(self, k: int, n: int, seed: int):
        super().__init__()
        self.k = k
        self.layers = nn.ModuleList([nn.Linear(k, 1, bias=False), nn.Linear(n - k, 1,
                                                                              bias=False)])
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g,
                                               dtype=torch.float64))
        self.double()

    def forward(self, x):
        return (self.layers[0](x[:, : self.k]) + self.layers[1](x[:, self.k:])).squeeze(-1)


@pytest.fixture(scope="module")
def gaussian_small():
    """The Gaussian data set (generated, always available; cached in memory)."""
    from milr.data import load_dataset

    return load_dataset("gaussian")


def mse(out, y):
    return 0.5 * ((out - y) ** 2).mean()


def neg_mse(out, y):
    """Score of a late trial: minus the loss, per member (``out`` is ``(m, n)``)."""
    return -0.5 * ((out - y) ** 2).mean(-1)


def _problem(n_samples=64, n=6, k=2, first_scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_samples, n, generator=g, dtype=torch.float64)
    x[:, :k] *= first_scale
    y = torch.randn(n_samples, generator=g, dtype=torch.float64)
    return x, y


def _limit(x, k, scales):
    h = (x.T @ x / len(x)).numpy()
    p = np.sqrt(np.r_[np.full(k, scales[0]), np.full(x.shape[1] - k, scales[1])])
    return 2.0 / np.linalg.eigvalsh(p[:, None] * h * p[None, :])[-1]


@pytest.mark.parametrize("scales", [(1.0, 1.0), (0.1, 1.0), (0.0, 1.0)])
def test_late_max_lr_finds_the_exact_gd_stability_limit(scales):
    """Full-batch GD on a quadratic: the search must bracket 2 / lambda_max(P^1/2 H P^1/2),
    not the plain 2 / lambda_max(H) when the first block is slowed or frozen."""
    k = 2
    x, y = _problem(k=k)
    model = TwoBlockRegression(k, x.shape[1], seed=1)
    steps = 400
    order = torch.arange(len(x)).repeat(steps, 1)  # full batch every step
    search = SearchConfig(eta_lo=1e-4, eta_hi=10.0, tol=0.02, scan_factor=4.0)
    res = late_max_lr(model, x, y, order, x, y, search, lr_scales=scales, delta=0.0,
                      loss_fn=mse, score_fn=neg_mse)
    exact = _limit(x, k, scales)
    assert res.status == "converged"
    assert res.bracket_hi / res.bracket_lo <= 1.02 + 1e-12
    # below the limit GD contracts (success), above it the top mode grows (failure); near
    # the limit from above the growth over 400 steps is only a few %, hence 0.5 % slack.
    assert res.bracket_lo <= exact * 1.005
    assert res.bracket_hi >= exact
    plain = _limit(x, k, (1.0, 1.0))
    if scales[0] < 1.0:
        assert exact > 1.5 * plain  # the effective limit is really a different number
        assert res.bracket_lo > 1.4 * plain


def test_late_trial_outcomes_and_reasons():
    k = 2
    x, y = _problem(k=k)
    model = TwoBlockRegression(k, x.shape[1], seed=1)
    before = [p.detach().clone() for p in model.parameters()]
    order = torch.arange(len(x)).repeat(200, 1)
    exact = _limit(x, k, (1.0, 1.0))
    kw = dict(lr_scales=(1.0, 1.0), delta=0.0, loss_fn=mse, score_fn=neg_mse)
    ok = late_trial(model, 0.9 * exact, x, y, order, x, y, **kw)
    assert ok.success and ok.reason == "kept_accuracy" and ok.steps == 200
    assert ok.score_end > ok.score_start  # the loss went down
    bad = late_trial(model, 1.2 * exact, x, y, order, x, y, **kw)
    assert not bad.success and bad.reason == "diverged_blowup"
    # |1 - eta lambda| = 1.4 on the top mode: the loss passes 100 x its first value within
    # about log(100 / share) / log(1.96) steps, long before the end
    assert bad.steps < 60 and bad.loss_max > 100 * bad.loss_first
    nan = late_trial(model, 1e6 * exact, x, y, order, x, y, **kw)
    assert not nan.success and nan.reason in ("diverged_nonfinite", "diverged_blowup")
    # lost accuracy without blow-up: just above the limit with a strict blow-up factor off
    lost = late_trial(model, 1.05 * exact, x, y, order[:30], x, y,
                      **{**kw, "blowup_factor": 1e12})
    assert lost.reason == "lost_accuracy" and lost.score_end < lost.score_start
    # the model itself is never modified
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


def test_late_trial_scores_the_mean_of_its_last_evaluations():
    """score_end is the mean of the last `window` measurements, taken every `eval_every`
    steps and after the last step (an independent record of every call)."""
    x, y = _problem()
    model = TwoBlockRegression(2, x.shape[1], seed=1)
    order = torch.arange(len(x)).repeat(23, 1)
    seen = []

    def score(out, yv):
        v = neg_mse(out, yv)
        seen.append(float(v[0]))
        return v

    limit = _limit(x, 2, (1.0, 1.0))
    r = late_trial(model, 0.5 * limit, x, y, order, x, y, lr_scales=(1.0, 1.0), delta=0.0,
                   loss_fn=mse, score_fn=score, score_start=-1e9, eval_every=5, window=3)
    assert len(seen) == 5  # steps 5, 10, 15, 20 and 23
    assert r.score_end == pytest.approx(np.mean(seen[-3:]), rel=1e-15) and r.success
    assert seen == sorted(seen)  # below the limit the loss only falls
    with pytest.raises(ValueError, match="window"):
        late_trial(model, 0.1, x, y, order, x, y, lr_scales=(1.0, 1.0), loss_fn=mse,
                   score_fn=neg_mse, eval_every=5, window=6)
    with pytest.raises(ValueError, match="window"):
        LateLRTask("gaussian", 1, 8, 0, 0.1, trial_steps=50, eval_every=25, window=4)


def test_late_trial_validates_its_arguments():
    x, y = _problem()
    model = TwoBlockRegression(2, x.shape[1], seed=1)
    order = torch.arange(len(x)).repeat(3, 1)
    kw = dict(lr_scales=(1.0, 1.0), loss_fn=mse, score_fn=neg_mse)
    with pytest.raises(ValueError, match="eta"):
        late_trial(model, 0.0, x, y, order, x, y, **kw)
    with pytest.raises(ValueError, match="delta"):
        late_trial(model, 0.1, x, y, order, x, y, delta=-0.1, **kw)
    with pytest.raises(ValueError, match="blowup_factor"):
        late_trial(model, 0.1, x, y, order, x, y, blowup_factor=1.0, **kw)
    with pytest.raises(ValueError, match="order"):
        late_trial(model, 0.1, x, y, order[0], x, y, **kw)
    with pytest.raises(ValueError, match="lr_scales"):
        late_trial(model, 0.1, x, y, order, x, y, lr_scales=(1.0,), loss_fn=mse,
                   score_fn=neg_mse)


def test_warm_up_matches_the_reference_sgd_loop(gaussian_small):
    """warm_up (the one trainer) follows the torch.optim.SGD reference exactly: same
    parameters after the same steps (float64, two independent implementations)."""
    data = gaussian_small
    cfg = TrialConfig(dataset="gaussian", depth=2, width=16, threshold=0.999, step_budget=40,
                      eval_every=40, n_val=200, input_lr_scale=0.1, dtype="float64")
    a = make_mlp(data.input_dim, 16, 2, data.n_classes, 3, torch.float64)
    reference_trial(cfg, 0.2, 3, data, model=a)
    b = make_mlp(data.input_dim, 16, 2, data.n_classes, 3, torch.float64)
    order = batch_indices(len(data.y_train), 64, 40 + 25, 3)[:40]  # a longer stream's head
    w = warm_up(b, 0.2, data.x_train.double(), data.y_train, order, data.x_val.double(),
                data.y_val, lr_scales=[0.1, 1.0, 1.0])
    assert not w.diverged and w.steps == 40
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    assert 0.5 < w.val_acc <= 1.0


def test_round_sig():
    assert round_sig(0.123456) == 0.123
    assert round_sig(31.55, 2) == 32.0
    with pytest.raises(ValueError, match="x"):
        round_sig(float("nan"))


def test_task_validation_and_key():
    t = LateLRTask("gaussian", 2, 32, 0, 0.05)
    assert t.search.method == "bisect"
    u = LateLRTask("gaussian", 2, 32, 0, 0.05, eta_star_ref=0.5, warmup_fraction=0.1,
                   search={"method": "batched"})
    assert task_key(t) == task_key(u)  # provenance and the search method do not key it
    assert task_key(t) != task_key(LateLRTask("gaussian", 2, 32, 0, 0.06))
    cfg = t.record_config()
    assert cfg["search_eta_hi"] == 30.0 and "eta_star_ref" not in cfg
    for kw, name in [({"warmup_lr": 0.0}, "warmup_lr"), ({"delta": -1.0}, "delta"),
                     ({"depth": 0}, "depth"), ({"dataset": "svhn"}, "dataset"),
                     ({"input_lr_scale": 2.0}, "input_lr_scale"), ({"dtype": "f16"}, "dtype")]:
        args = {"dataset": "gaussian", "depth": 1, "width": 8, "seed": 0, "warmup_lr": 0.1,
                **kw}
        with pytest.raises(ValueError, match=name):
            LateLRTask(**args)


def test_late_lr_tasks_builder():
    ref = {("gaussian", 1, 32): 20.0, ("gaussian", 2, 32): float("nan"),
           ("gaussian", 4, 32): 0.4567}
    tasks = late_lr_tasks(["gaussian"], [1, 2, 4], [32], [0, 1], ref, warmup_fraction=0.1,
                          trial_steps=50, window=2)
    assert [(t.depth, t.seed) for t in tasks] == [(1, 0), (1, 1), (4, 0), (4, 1)]
    assert tasks[0].warmup_lr == 2.0 and tasks[2].warmup_lr == 0.0457
    assert tasks[2].eta_star_ref == 0.4567 and tasks[2].trial_steps == 50
    with pytest.raises(ValueError, match="unknown option"):
        late_lr_tasks(["gaussian"], [1], [32], [0], ref, nonsense=1)
    with pytest.raises(ValueError, match="warmup_fraction"):
        late_lr_tasks(["gaussian"], [1], [32], [0], ref, warmup_fraction=0.0)


def test_late_task_end_to_end(tmp_path, gaussian_small):
    """A real (tiny) task through the sweep machinery; its bracket reproduces (lo succeeds,
    hi fails) and its lambda_1 agrees with power iteration (a second algorithm)."""
    from milr.sharpness import LossHessian, power_iteration_top_eigenvalue, sharpness_subset

    task = LateLRTask("gaussian", 1, 16, 0, warmup_lr=0.5, warmup_steps=60, trial_steps=50,
                      eval_every=10, window=3, n_val=200, n_subset=100, sharpness_tol=1e-8,
                      search=SearchConfig(eta_lo=1e-2, eta_hi=30.0, tol=0.2))
    df = run_sweep([task], Store(tmp_path), progress=False, errors="raise")
    row = df.iloc[0]
    assert row.status == "converged" and math.isfinite(row.eta_late)
    assert row.bracket_hi / row.bracket_lo <= 1.2 + 1e-9
    assert row.warmup_val_acc > 0.6
    model, warm, tt = task.prepare(gaussian_small)
    assert warm.val_acc == row.warmup_val_acc
    assert warm.val_acc_window == row.warmup_val_acc_window != warm.val_acc
    kw = dict(lr_scales=task.lr_scales(), delta=task.delta, score_start=warm.val_acc_window,
              eval_every=10, window=3)
    args = (tt["x_train"], tt["y_train"], tt["order"], tt["x_val"], tt["y_val"])
    assert late_trial(model, row.bracket_lo, *args, **kw).success
    assert not late_trial(model, row.bracket_hi, *args, **kw).success
    x, y = sharpness_subset(gaussian_small, 100)
    op = LossHessian(model, x, y, lr_scales=task.lr_scales())
    pw = power_iteration_top_eigenvalue(op.matvec, op.n, tol=1e-10, maxiter=5000)
    assert row.lambda_1_eff == pytest.approx(pw.eigenvalue, rel=1e-5)
    assert row.stability_limit_eff == pytest.approx(2 / row.lambda_1_eff)


def test_late_notebook_runs_with_smoke_parameters(tmp_path):
    """papermill run in smoke mode: eta* of the smoke grid, then the late-stage searches of
    every configuration with an eta*, then the figure."""
    pm = pytest.importorskip("papermill")
    from pathlib import Path

    from milr.conditions import figure_tasks, late_tasks
    from milr.presets import get_preset
    from milr.sweep import load_results

    nb = Path(__file__).resolve().parent.parent / "notebooks" / "fig_late_lr.ipynb"
    store, figs = tmp_path / "store", tmp_path / "figs"
    pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), kernel_name="python3",
                        cwd=str(nb.parent), progress_bar=False,
                        parameters={"smoke": True, "store_dir": str(store),
                                    "figure_dir": str(figs)})
    assert (figs / "fig_late_lr.png").stat().st_size > 20_000
    p = get_preset("smoke")
    ref = load_results(figure_tasks(p, "late_lr")["reference"], Store(store))
    late = load_results(late_tasks(p, ref), Store(store))
    assert len(late) == len(late_tasks(p, ref)) >= 3
    assert (late.eta_late > 0).all() and (late.lambda_1_eff > 0).all()


def test_late_stage_counts_nan_validation_as_divergence(gaussian_small):
    """Every validation logit NaN and every label 0 (argmax-based accuracy would read 1.0):
    the warm-up and a late trial diverge (diverged_nonfinite), they never keep accuracy."""
    data = gaussian_small
    model = make_mlp(data.input_dim, 16, 1, data.n_classes, 0)
    xv = torch.full((50, data.input_dim), float("nan"))
    yv = torch.zeros(50, dtype=torch.long)
    order = batch_indices(len(data.y_train), 64, 20, 0)
    args = (data.x_train, data.y_train, order, xv, yv)
    r = late_trial(model, 0.1, *args, lr_scales=[0.01, 1.0], score_start=0.0, eval_every=10)
    assert (r.success, r.reason, r.steps) == (False, "diverged_nonfinite", 10)
    w = warm_up(model, 0.1, *args, lr_scales=[0.01, 1.0], eval_every=10)
    assert w.diverged and math.isnan(w.val_acc) and w.steps == 10
