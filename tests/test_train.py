"""One trial: divergence detection, budget, success on known data."""
import math

import pytest
import torch

from milr.config import TrialConfig
from milr.data import load_dataset
from milr.models import make_mlp
from milr.train import batch_indices, run_trial, val_subset


@pytest.fixture(scope="module")
def gaussian():
    return load_dataset("gaussian")


def cfg(**kw):
    base = dict(dataset="gaussian", depth=2, width=32, step_budget=100, eval_every=20, n_val=500)
    return TrialConfig(**(base | kw))


def test_nan_parameters_detected_as_nonfinite(gaussian):
    c = cfg()
    m = make_mlp(gaussian.input_dim, 32, 2, 2, seed=0)
    with torch.no_grad():
        m.layers[1].weight[0, 0] = float("nan")
    r = run_trial(c, 0.1, 0, data=gaussian, model=m)
    assert (r.success, r.reason, r.steps) == (False, "diverged_nonfinite", 1)


def test_inf_loss_detected_as_nonfinite(gaussian):
    # Read-out weights of +/-1e37 make float32 logits of opposite sign ~ +/-1e38, whose
    # difference overflows: the cross-entropy is +inf (not NaN).
    c = cfg()
    m = make_mlp(gaussian.input_dim, 32, 2, 2, seed=0)
    with torch.no_grad():
        m.layers[-1].weight.zero_()
        m.layers[-1].bias.copy_(torch.tensor([3e38, -3e38]))
    x, y = gaussian.x_train[:64], gaussian.y_train[:64]
    loss = torch.nn.functional.cross_entropy(m(x), torch.ones_like(y))
    assert math.isinf(loss.item())  # the premise: this net's loss is +inf
    # labels of the first batch include class 1, so the first loss is +inf
    r = run_trial(c, 0.1, 0, data=gaussian, model=m)
    assert (r.success, r.reason, r.steps) == (False, "diverged_nonfinite", 1)


def test_huge_learning_rate_diverges(gaussian):
    r = run_trial(cfg(), 1e6, 0, data=gaussian)
    assert not r.success
    assert r.reason in ("diverged_nonfinite", "diverged_blowup")
    assert r.steps < 20


def test_blowup_rule_uses_initial_loss(gaussian):
    # blowup_factor just above 1: any loss increase over the first loss counts as divergence
    r = run_trial(cfg(blowup_factor=1.0001), 50.0, 0, data=gaussian)
    assert r.reason == "diverged_blowup"


def test_tiny_learning_rate_exhausts_budget(gaussian):
    r = run_trial(cfg(), 1e-8, 0, data=gaussian)
    assert (r.success, r.reason, r.steps) == (False, "budget_exhausted", 100)
    assert 0.3 < r.best_acc < 0.85


def test_good_learning_rate_succeeds_and_stops_at_threshold(gaussian):
    c = cfg(depth=1, width=64, input_lr_scale=1.0)
    r = run_trial(c, 1.0, 0, data=gaussian, record_curve=True)
    assert r.success and r.reason == "reached_threshold"
    assert r.best_acc >= c.threshold
    assert r.steps % c.eval_every == 0 and r.steps == r.curve[-1][0]
    assert all(a < c.threshold for _, a in r.curve[:-1])


def test_trial_is_deterministic(gaussian):
    a = run_trial(cfg(), 0.5, 3, data=gaussian, record_curve=True)
    b = run_trial(cfg(), 0.5, 3, data=gaussian, record_curve=True)
    assert (a.reason, a.steps, a.curve) == (b.reason, b.steps, b.curve)


def test_batch_indices_are_epoch_permutations():
    idx = batch_indices(n=10, batch_size=4, steps=5, seed=0)
    assert idx.shape == (5, 4)
    flat = idx.flatten()
    assert sorted(flat[:10].tolist()) == list(range(10))
    assert sorted(flat[10:20].tolist()) == list(range(10))
    assert torch.equal(idx, batch_indices(10, 4, 5, 0))
    assert not torch.equal(idx, batch_indices(10, 4, 5, 1))


def test_val_subset_fixed(gaussian):
    x1, y1 = val_subset(gaussian, 100)
    x2, y2 = val_subset(gaussian, 100)
    assert x1.shape == (100, 100) and torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("eta", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_eta_raises(gaussian, eta):
    with pytest.raises(ValueError, match="eta"):
        run_trial(cfg(), eta, 0, data=gaussian)


@pytest.mark.parametrize(
    "kw,name",
    [({"threshold": 0.4}, "threshold"), ({"threshold": 1.0}, "threshold"),
     ({"depth": 0}, "depth"), ({"width": -3}, "width"), ({"step_budget": 0}, "step_budget"),
     ({"input_lr_scale": 2.0}, "input_lr_scale"), ({"dataset": "imagenet"}, "dataset"),
     ({"dtype": "float16"}, "dtype"), ({"blowup_factor": 0.5}, "blowup_factor")],
)
def test_bad_trial_config_names_parameter(kw, name):
    with pytest.raises((ValueError, TypeError), match=name):
        cfg(**kw)
