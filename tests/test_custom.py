"""milr.eta_star_for / milr.sharpness_of: the built-in MLP given as a model_fn gives the same
trials and eta* as milr.search.eta_star; lambda_1 of any module against the built-in path and
against dense float64 Hessians; one clear error before training for bad input; the cache."""
from __future__ import annotations

import inspect
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import milr  # noqa: E402
import milr.custom as custom  # noqa: E402
from milr.config import SearchConfig, TrialConfig  # noqa: E402
from milr.custom import (KIND, data_fingerprint, eta_star_for, parameter_multipliers,  # noqa: E402
                         sharpness_of)
from milr.data import Dataset, load_dataset  # noqa: E402
from milr.models import layer_lr_scales, make_mlp, param_groups  # noqa: E402
from milr.search import eta_star  # noqa: E402
from milr.sharpness import sharpness  # noqa: E402
from milr.store import Store  # noqa: E402
from milr.train import StackedModule, val_subset  # noqa: E402
from milr.trials import plot_trials, trial_table  # noqa: E402
from reference import dense_hessian  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def gaussian():
    return load_dataset("gaussian")


@pytest.fixture(scope="module")
def small(gaussian):
    """2000 training rows and the 500-row validation subset of the built-in trials."""
    xv, yv = val_subset(gaussian, 500)
    return gaussian.x_train[:2000], gaussian.y_train[:2000], xv, yv


def _log(r):
    """A search's trial log without the wall times."""
    return [{k: v for k, v in t.items() if k != "wall_time"} for t in r.trials]


def _canon(r) -> str:
    """A result as canonical JSON (NaN as a token, so equal results compare equal)."""
    return json.dumps(r.to_dict(), sort_keys=True)


def _summary(r):
    return (r.seed, r.eta_star, r.bracket_lo, r.bracket_hi, r.status, r.n_trials,
            r.non_interval)


# -- the built-in MLP through the module path -------------------------------------------------

@pytest.mark.parametrize("method,input_lr_scale,width,budget,threshold", [
    ("batched", 0.01, 32, 100, 0.8), ("bisect", 1.0, 16, 60, 0.8),
    ("batched", 0.0, 32, 100, 0.7)])
def test_builtin_mlp_as_model_fn_gives_the_same_trials_and_eta_star(
        gaussian, method, input_lr_scale, width, budget, threshold):
    """Same MLP (make_mlp, same seed, float64), same rules, same search: the same bracket,
    status and trial log, trial by trial. The hand-written and the torch.func gradients
    differ by rounding (1e-16 relative at step 1); in these short budgets that never changes
    an outcome. (Not a general guarantee: at a rate near the edge of stability a depth-2,
    width-64 net amplified the difference e-fold every ~6 steps, to a different outcome after
    ~150 steps, as it does between either path and the torch.optim reference; see
    docs/DESIGN.md, "Rounding".) Input-layer rate 0 is a frozen input layer on both paths."""
    c = TrialConfig("gaussian", depth=2, width=width, step_budget=budget, eval_every=10,
                    n_val=500, input_lr_scale=input_lr_scale, threshold=threshold,
                    dtype="float64")
    s = SearchConfig(eta_lo=0.01, eta_hi=30.0, tol=0.3, method=method)
    built_in = eta_star(c, s, [0, 1], data=gaussian)
    xv, yv = val_subset(gaussian, c.n_val)
    mine = eta_star_for(lambda seed: make_mlp(100, width, 2, 2, seed, torch.float64),
                        (gaussian.x_train, gaussian.y_train, xv, yv), threshold=threshold,
                        seeds=[0, 1], step_budget=budget, eval_every=10,
                        batch_size=c.batch_size, blowup_factor=c.blowup_factor,
                        lr_multipliers={"layers.0": input_lr_scale}, search=s, dtype="float64")
    assert [r.status for r in built_in] == ["converged", "converged"]
    for a, b in zip(built_in, mine):
        assert _summary(a) == _summary(b)
        assert _log(a) == _log(b)
        assert any(t["success"] for t in b.trials) and not all(t["success"] for t in b.trials)


def test_float32_mlp_is_bit_for_bit_the_builtin_generic_path(gaussian):
    """In float32 too: eta_star_for on the MLP is exactly eta_star(..., generic=True) (the
    same torch.func gradients and the same updates), trial by trial."""
    c = TrialConfig("gaussian", depth=2, width=16, step_budget=60, eval_every=10, n_val=500,
                    input_lr_scale=0.3, threshold=0.8)
    s = SearchConfig(eta_lo=0.01, eta_hi=30.0, tol=0.3, method="batched")
    built_in = eta_star(c, s, [0], data=gaussian, generic=True)
    xv, yv = val_subset(gaussian, c.n_val)
    mine = eta_star_for(lambda seed: make_mlp(100, 16, 2, 2, seed), (gaussian.x_train,
                        gaussian.y_train, xv, yv), threshold=0.8, step_budget=60,
                        eval_every=10, lr_multipliers={"layers.0": 0.3}, search=s)
    assert built_in[0].status == "converged"
    assert _summary(built_in[0]) == _summary(mine[0]) and _log(built_in[0]) == _log(mine[0])


def test_defaults_are_those_of_the_builtin_trials():
    sig = inspect.signature(eta_star_for).parameters
    for name in ("step_budget", "batch_size", "eval_every", "blowup_factor", "dtype"):
        assert sig[name].default == TrialConfig.__dataclass_fields__[name].default, name
    assert sig["threshold"].default is inspect.Parameter.empty  # no data-set default here
    assert milr.eta_star_for is eta_star_for and milr.sharpness_of is sharpness_of


# -- a small CNN ----------------------------------------------------------------------------

class TinyCNN(nn.Module):
    """1x10x10 images -> conv 3x3 (3 channels) -> ReLU -> linear read-out (2 classes)."""

    def __init__(self, act=torch.relu):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.head = nn.Linear(3 * 8 * 8, 2)
        self.act = act

    def forward(self, x):
        return self.head(self.act(self.conv(x)).flatten(1))


def cnn_fn(seed, dtype=torch.float32):
    torch.manual_seed(seed)
    return TinyCNN().to(dtype)


def images(small):
    xtr, ytr, xv, yv = small
    return xtr.view(-1, 1, 10, 10), ytr, xv.view(-1, 1, 10, 10), yv


def test_cnn_search_is_deterministic_and_its_log_makes_table_and_plot(small):
    data = images(small)
    s = SearchConfig(eta_lo=0.01, eta_hi=10.0, tol=0.5, method="batched")
    kw = dict(threshold=0.85, seeds=[3], step_budget=30, eval_every=10, search=s,
              lr_multipliers={"conv": 0.5})
    stats = {}
    (a,) = eta_star_for(cnn_fn, data, stats=stats, **kw)
    (b,) = eta_star_for(cnn_fn, data, **kw)
    assert a.status == "converged" and 0.01 < a.eta_star < 10.0
    assert _summary(a) == _summary(b) and _log(a) == _log(b)
    assert stats["member_steps"] > 0 and math.isnan(stats["flops"])
    df = trial_table(a)
    assert len(df) == a.n_trials and (df.outcome == "success").any()
    assert df.eta.max() > a.eta_star  # a failure above eta* closes the bracket
    axes = plot_trials(a, threshold=0.85)
    assert len(axes) == 2
    plt.close("all")


class Branchy(nn.Module):
    """Python control flow on a tensor's value: vmap cannot batch it, grad can."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(100, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if h.abs().max() > 1e3:
            h = h / 10
        return self.b(h)


def test_a_module_vmap_cannot_batch_runs_one_trial_at_a_time(small):
    def fn(seed):
        torch.manual_seed(seed)
        return Branchy()

    s = SearchConfig(eta_lo=0.1, eta_hi=3.0, tol=1.0, max_trials=4)
    kw = dict(threshold=0.8, step_budget=10, eval_every=5, search=s)
    with pytest.warns(UserWarning, match="one at a time"):
        (r,) = eta_star_for(fn, small, **kw)
    assert r.n_trials >= 1 and all(t["reason"] for t in r.trials)
    with pytest.warns(UserWarning, match="one at a time"):
        (again,) = eta_star_for(fn, small, **kw)
    assert _log(again) == _log(r)


def test_batchnorm_in_training_mode_is_one_clear_error(small, no_training):
    """BatchNorm in training mode updates its buffers in place, which torch.func refuses."""
    def fn(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(100, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))

    with pytest.raises(ValueError, match="cannot be trained through torch.func.*in-place"):
        eta_star_for(fn, small, threshold=0.8)
    with pytest.raises(AssertionError, match="training started"):  # eval mode: fine
        eta_star_for(lambda s: fn(s).eval(), small, threshold=0.8)


def test_frozen_parameters_never_change():
    m = make_mlp(4, 3, 1, 2, 0)
    net = StackedModule(m, layer_of=range(4), frozen_layers=[0, 1])
    P = [torch.stack([p.detach()] * 2) for p in m.parameters()]
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1])
    _, g = net.forward_loss(P, [(0, 2)], [x], y.expand(2, 5))
    grads = net.grads(g, torch.tensor([True, False]))
    assert grads[0] is None and grads[1] is None
    assert grads[2].shape == (2, 2, 3) and (grads[2][1] == 0).all()
    assert grads[2][0].abs().sum() > 0


# -- learning-rate multipliers ----------------------------------------------------------------

def test_multipliers_by_prefix_group_and_parameter_groups():
    m = make_mlp(4, 3, 2, 2, 0)
    assert parameter_multipliers(m) == {n: 1.0 for n, _ in m.named_parameters()}
    got = parameter_multipliers(m, {"": 0.5, "layers.0": 0.01, "layers.0.bias": 0.0,
                                    ("layers.2.weight", "layers.1"): 2.0})
    assert got == {"layers.0.weight": 0.01, "layers.0.bias": 0.0, "layers.1.weight": 2.0,
                   "layers.1.bias": 2.0, "layers.2.weight": 2.0, "layers.2.bias": 0.5}
    # "layers.1" names layers.1.*, never layers.10: prefixes end at a dot
    groups = parameter_multipliers(m, lambda mod: param_groups(mod, 1.0, 0.25))
    assert groups == parameter_multipliers(m, {"layers.0": 0.25})


@pytest.mark.parametrize("mults,exc,pattern", [
    ({"layer.0": 0.1}, ValueError, r"prefix 'layer.0' matches no parameter; .*layers.0.weight"),
    ({"layers.0": -1.0}, ValueError, r"lr_multipliers\['layers.0'\]=-1.0 must be a finite"),
    ({"layers.0": math.inf}, ValueError, r"lr_multipliers\['layers.0'\]=inf"),
    ({3: 1.0}, TypeError, "key 3 must be a parameter-name prefix"),
    ([0.1, 1.0], TypeError, "must be None, a dict"),
    (lambda m: [{"params": [torch.zeros(1)], "lr_scale": 1.0}], ValueError,
     "not a parameter of the module"),
    (lambda m: [{"params": list(m.parameters()), "lr_scale": 1.0},
                {"params": list(m.parameters()), "lr_scale": 2.0}], ValueError,
     "in two lr_multipliers groups"),
])
def test_bad_multipliers(mults, exc, pattern):
    with pytest.raises(exc, match=pattern):
        parameter_multipliers(make_mlp(4, 3, 2, 2, 0), mults)


# -- one clear error before training -----------------------------------------------------------

@pytest.fixture
def no_training(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(custom, "eta_star_on", fail)


def _shared_fn():
    base = make_mlp(100, 4, 1, 2, 0)

    def fn(seed):
        m = make_mlp(100, 4, 1, 2, seed)
        m.layers = base.layers  # the same Parameter objects on every call
        return m
    return fn


_net = make_mlp(100, 4, 1, 2, 0)


def _bad_data(small, what):
    xtr, ytr, xv, yv = small
    if what == "nan":
        xtr = xtr.clone()
        xtr[3, 7] = math.nan
    elif what == "empty":
        xv, yv = xv[:0], yv[:0]
    elif what == "lengths":
        ytr = ytr[:-1]
    elif what == "labels":
        yv = yv.clone()
        yv[0] = 5
    elif what == "float_labels":
        ytr = ytr.float()
    return xtr, ytr, xv, yv


@pytest.mark.parametrize("case,kw,exc,pattern", [
    ("model", dict(model_fn=lambda s: _net), ValueError, "returned the same object twice"),
    ("model", dict(model_fn=_shared_fn()), ValueError, "share parameter tensors"),
    ("model", dict(model_fn=lambda s: nn.Linear(100, 2)), ValueError,
     "different parameters on two calls"),
    ("model", dict(model_fn=lambda s: 3), TypeError, r"model_fn\(0\) returned int"),
    ("model", dict(model_fn=lambda s: make_mlp(100, 4, 1, 3, s)), ValueError,
     r"outputs 3 logits per row; data set gaussian has n_classes=2"),
    ("model", dict(model_fn=lambda s: nn.Sequential(make_mlp(100, 4, 1, 2, s),
                                                    nn.Flatten(0))),
     ValueError, r"has shape \(4,\); it must be logits \(2, n_classes\)"),
    ("nan", {}, ValueError, "data x_train has 1 non-finite entries"),
    ("empty", {}, ValueError, r"data x_val has shape \(0, 100\); it must be \(N, \.\.\.\) "
                              "with N >= 1"),
    ("lengths", {}, ValueError, r"data y_train has shape \(1999,\); it must be \(2000,\)"),
    ("labels", {}, ValueError, r"y_val holds the label 5; the model outputs 2 logits, so "
                               r"labels must lie in \[0, 1\]"),
    ("float_labels", {}, TypeError, "labels must be integers"),
    ("rules", dict(threshold=0.3), ValueError, r"threshold \(chance for 2 classes is 0.5\)=0.3"),
    ("rules", dict(step_budget=0), ValueError, "step_budget=0 must be an integer >= 1"),
    ("rules", dict(dtype="float16"), ValueError, "dtype='float16' must be one of"),
    ("rules", dict(lr_multipliers={"layers.9": 1.0}), ValueError, "matches no parameter"),
    ("rules", dict(seeds=[0, 0]), ValueError, "repeats"),
    ("rules", dict(data=(1, 2)), TypeError, "four tensors"),
    ("rules", dict(name="mine"), ValueError, "caching needs both store= and name="),
])
def test_bad_input_is_one_clear_error_before_training(small, no_training, gaussian, case, kw,
                                                      exc, pattern):
    data = gaussian if case == "model" else _bad_data(small, case)
    args = dict(model_fn=lambda s: make_mlp(100, 4, 1, 2, s), data=data, threshold=0.8)
    args.update(kw)
    with pytest.raises(exc, match=pattern) as info:
        eta_star_for(**args)
    assert "\n" not in str(info.value)


def test_a_seed_blind_model_fn_is_warned(small, no_training):
    with pytest.warns(UserWarning, match=r"model_fn\(0\) and model_fn\(1\) have identical"):
        with pytest.raises(AssertionError, match="training started"):
            eta_star_for(lambda s: make_mlp(100, 4, 1, 2, 0), small, threshold=0.8)


# -- the cache ------------------------------------------------------------------------------

def test_cached_results_come_back_without_training(small, tmp_path, monkeypatch):
    store = Store(tmp_path / "results")
    s = SearchConfig(eta_lo=0.3, eta_hi=3.0, tol=1.0)
    kw = dict(threshold=0.8, seeds=[0, 1], step_budget=20, eval_every=10, search=s,
              store=store, name="tiny mlp", version="1")
    fn = lambda seed: make_mlp(100, 4, 1, 2, seed)  # noqa: E731
    first = eta_star_for(fn, small, **kw)
    recs = store.records(KIND)
    assert len(recs) == 2 and {r["config"]["seed"] for r in recs} == {0, 1}
    rec = recs[0]
    assert rec["config"]["name"] == "tiny mlp" and rec["config"]["version"] == "1"
    assert rec["config"]["data"] == data_fingerprint(small)
    assert rec["config"]["parameters"]["layers.0.weight"] == [4, 100]
    assert rec["meta"]["code_version"].startswith("milr")

    def fail(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(custom, "eta_star_on", fail)
    again = eta_star_for(fn, small, **{**kw, "store": tmp_path / "results"})
    assert [_canon(r) for r in again] == [_canon(r) for r in first]
    assert len(trial_table(again[0])) == first[0].n_trials
    for change in ({"version": "2"}, {"threshold": 0.85}, {"lr_multipliers": {"layers.0": .1}}):
        with pytest.raises(AssertionError, match="training started"):
            eta_star_for(fn, small, **{**kw, **change})
    other = (small[0] * 1.0001, *small[1:])
    assert data_fingerprint(other) != data_fingerprint(small)
    with pytest.raises(AssertionError, match="training started"):
        eta_star_for(fn, other, **kw)


# -- lambda_1 of any module ---------------------------------------------------------------------

def _tiny(seed=0, n=9):
    g = torch.Generator().manual_seed(50 + seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def test_sharpness_of_the_mlp_is_the_builtin_sharpness():
    model = make_mlp(5, 8, 2, 3, 0, torch.float64)
    x, y = _tiny()
    r = sharpness_of(model, x, y, {"layers.0": 0.01})
    plain = sharpness(model, x, y)
    eff = sharpness(model, x, y, lr_scales=layer_lr_scales(2, 0.01))
    assert r.lambda_1 == plain.eigenvalue and r.lambda_1_eff == eff.eigenvalue
    assert r.plain.n_hvp == plain.n_hvp and r.effective.n_hvp == eff.n_hvp
    assert r.lambda_1_eff < r.lambda_1
    same = sharpness_of(model, x, y)
    assert same.effective is same.plain and same.lambda_1 == plain.eigenvalue
    assert set(r.to_dict()) >= {"lambda_1", "lambda_1_eff", "lambda_1_eff_converged"}


def _top(a):
    return float(np.linalg.eigvalsh(0.5 * (a + a.T))[-1])


@pytest.mark.parametrize("kind", ["tanh_mlp", "cnn"])
def test_sharpness_of_any_module_matches_the_dense_float64_hessian(kind):
    torch.manual_seed(0)
    if kind == "tanh_mlp":
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
        x, y = _tiny()
        mults = {"0": 0.1}
    else:
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(),
                              nn.Linear(2 * 3 * 3, 3)).double()
        x = torch.randn(8, 1, 5, 5, dtype=torch.float64)
        y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
        mults = {"0": 0.1, "3.bias": 3.0}
    h = dense_hessian(model, x, y)
    r = sharpness_of(model, x, y, mults, tol=1e-10)
    p = np.concatenate([np.full(q.numel(), parameter_multipliers(model, mults)[n])
                        for n, q in model.named_parameters()])
    eff = np.sqrt(p)[:, None] * h * np.sqrt(p)[None, :]
    assert abs(r.lambda_1 - _top(h)) <= 1e-8 * abs(_top(h))
    assert abs(r.lambda_1_eff - _top(eff)) <= 1e-8 * abs(_top(eff))
    assert r.plain.converged and r.effective.converged and r.lambda_1_eff != r.lambda_1


def test_sharpness_of_bad_input():
    model = nn.Sequential(nn.Linear(5, 3))
    x, y = _tiny()
    x = x.float()
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 2\]: the model outputs 3"):
        sharpness_of(model, x, y + 3)
    with pytest.raises(ValueError, match="x has 1 non-finite entries"):
        sharpness_of(model, torch.where(torch.arange(45).view(9, 5) == 4, math.nan, x), y)
    with pytest.raises(ValueError, match=r"y has shape \(8,\); it must be \(9,\)"):
        sharpness_of(model, x, y[:-1])
    with pytest.raises(ValueError, match="matches no parameter"):
        sharpness_of(model, x, y, {"1": 0.5})
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        sharpness_of(lambda v: v, x, y)
