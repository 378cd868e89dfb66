"""Initialisation statistics and per-layer learning rates."""
import math

import pytest
import torch
import torch.nn.functional as F

from milr.models import layer_lr_scales, make_mlp, param_groups


def test_he_initialisation_statistics():
    m = make_mlp(n0=500, width=800, depth=3, n_classes=10, seed=0, dtype=torch.float64)
    for i, layer in enumerate(m.layers):
        w = layer.weight
        gain = 1.0 if i == len(m.layers) - 1 else 2.0
        expected = math.sqrt(gain / layer.in_features)
        # std of n >= 8000 Gaussian samples: relative standard error < 1 %
        assert w.std().item() == pytest.approx(expected, rel=0.03)
        assert w.mean().item() == pytest.approx(0.0, abs=4 * expected / math.sqrt(w.numel()))
        assert torch.count_nonzero(layer.bias) == 0


def test_he_init_preserves_second_moment_through_depth():
    # He init: E[relu(h)^2] = q is preserved layer to layer (q = ||x||^2 / n0 for layer 1).
    torch.manual_seed(0)
    x = torch.randn(256, 300, dtype=torch.float64)
    m = make_mlp(300, 1024, 6, 10, seed=1, dtype=torch.float64)
    q = []
    h = x
    for layer in m.layers[:-1]:
        h = torch.relu(layer(h))
        q.append((h ** 2).mean().item())
    assert q[0] == pytest.approx(1.0, rel=0.05)
    assert max(q) / min(q) < 1.15


def test_same_seed_same_weights_and_dtype_independent():
    a = make_mlp(20, 16, 2, 3, seed=5)
    b = make_mlp(20, 16, 2, 3, seed=5, dtype=torch.float64)
    c = make_mlp(20, 16, 2, 3, seed=6)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb.float())
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)


def test_input_layer_learning_rate_actually_applied():
    m = make_mlp(12, 10, 3, 4, seed=0, dtype=torch.float64)
    before = [p.detach().clone() for p in m.parameters()]
    eta, scale = 0.3, 0.01
    opt = torch.optim.SGD(param_groups(m, eta, scale), lr=eta)
    x = torch.randn(32, 12, dtype=torch.float64)
    y = torch.randint(0, 4, (32,))
    loss = F.cross_entropy(m(x), y)
    grads = torch.autograd.grad(loss, list(m.parameters()))
    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    opt.step()
    scales = layer_lr_scales(3, scale)
    per_layer = [s for s in scales for _ in range(2)]  # weight and bias of each layer
    for p0, p1, g, s in zip(before, m.parameters(), grads, per_layer):
        torch.testing.assert_close(p0 - p1, eta * s * g, rtol=1e-12, atol=1e-15)
    assert per_layer[:2] == [0.01, 0.01] and per_layer[2:] == [1.0] * 6


def test_frozen_input_layer():
    m = make_mlp(6, 5, 2, 3, seed=0)
    w0 = m.layers[0].weight.detach().clone()
    opt = torch.optim.SGD(param_groups(m, 1.0, 0.0), lr=1.0)
    F.cross_entropy(m(torch.randn(8, 6)), torch.randint(0, 3, (8,))).backward()
    opt.step()
    assert torch.equal(m.layers[0].weight, w0)


@pytest.mark.parametrize("kw", [{"width": 0}, {"depth": -1}, {"width": 2.5}, {"depth": True}])
def test_bad_sizes_raise_naming_parameter(kw):
    args = {"n0": 4, "width": 8, "depth": 2, "n_classes": 3, "seed": 0} | kw
    name = next(iter(kw))
    with pytest.raises((ValueError, TypeError), match=name):
        make_mlp(**args)
